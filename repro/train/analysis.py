"""Fig. 7's measurement: the standard deviation of each 3x3 layer's response on the test set, and what explains it.

A response is a 3x3 conv's output after BN and before the nonlinearity / addition (§4.2, Fig. 7).
The std is over every element (images x channels x positions) of the test set, in eval mode.
Beside it, per layer, what sets a BN output's scale: the mean |gamma| and the std of beta of that BN (weight
decay pulls gamma from 1 towards 0 only slowly: at a short schedule it is still near 1); and, per residual
block, the ratio of the branch's output std (its last BN's response) to the shortcut's output std — the quantity
the paper's sentence is about ("an individual layer of ResNets tends to modify the signal less", §4.2).
"""
from __future__ import annotations

import csv
from pathlib import Path

import torch

from repro.data.cifar import ImageData, normalize
from repro.models import Block, ResNet
from repro.results import EXPLAIN_COLUMNS

COLUMNS = ["layer", "std", *EXPLAIN_COLUMNS]  # responses.csv (its reader: repro.results.read_responses)


@torch.no_grad()
def response_stats(model: ResNet, x: torch.Tensor, mean: torch.Tensor, batch_size: int = 1000) -> list[dict]:
    """One row per 3x3 layer (COLUMNS): its response std, its BN's mean |gamma| and std of beta (population
    std), and on the row of each residual block's last layer the block's branch std over its shortcut std
    (None elsewhere, and on plain nets)."""
    layers = model.response_layers()
    blocks = [b for b in model.stages.modules() if isinstance(b, Block) and b.shortcut is not None]
    watched = [*layers, *(b.shortcut for b in blocks)]
    sums = torch.zeros(len(watched), 3, dtype=torch.float64, device=x.device)  # n, sum, sum of squares

    def hook(i):
        def record(module, inputs, out):
            o = out.double()
            sums[i] += torch.stack([torch.tensor(o.numel(), dtype=torch.float64, device=o.device), o.sum(), o.square().sum()])
        return record

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(watched)]
    model.eval()
    try:
        for i in range(0, len(x), batch_size):
            model(normalize(x[i : i + batch_size], mean))
    finally:
        for h in handles:
            h.remove()
        model.train()
    n, s, sq = sums.T
    std = (sq / n - (s / n) ** 2).clamp_min(0).sqrt().tolist()
    rows = [{"layer": i + 1, "std": std[i], "gamma_abs_mean": bn.weight.abs().mean().item(),
             "beta_std": bn.bias.std(unbiased=False).item(), "branch_over_shortcut": None}
            for i, bn in enumerate(layers)]
    index = {id(bn): i for i, bn in enumerate(layers)}
    for j, b in enumerate(blocks):
        k = index[id(b.layers[-1][1])]  # the branch's output is its last conv's BN output, a response
        rows[k]["branch_over_shortcut"] = std[k] / std[len(layers) + j] if std[len(layers) + j] > 0 else float("inf")
    return rows


def format_rows(rows: list[dict]) -> list[list[str]]:
    return [[str(r["layer"]), *(("" if r[c] is None else f"{r[c]:.6g}") for c in COLUMNS[1:])] for r in rows]


def write_responses(model: ResNet, data: ImageData, path: Path, batch_size: int = 1000) -> None:
    rows = response_stats(model, data.test_x, data.mean, batch_size)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        w.writerows(format_rows(rows))
