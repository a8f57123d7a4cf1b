"""Fig. 7's measurement: the standard deviation of each 3x3 layer's response on the test set.

A response is a 3x3 conv's output after BN and before the nonlinearity / addition (§4.2, Fig. 7).
The std is over every element (images x channels x positions) of the test set, in eval mode.
"""
from __future__ import annotations

import csv
from pathlib import Path

import torch

from .data import ImageData, normalize
from .models import ResNet


@torch.no_grad()
def response_std(model: ResNet, x: torch.Tensor, mean: torch.Tensor, batch_size: int = 1000) -> list[float]:
    layers = model.response_layers()
    sums = torch.zeros(len(layers), 3, dtype=torch.float64, device=x.device)  # n, sum, sum of squares

    def hook(i):
        def record(module, inputs, out):
            o = out.double()
            sums[i] += torch.stack([torch.tensor(o.numel(), dtype=torch.float64, device=o.device), o.sum(), o.square().sum()])
        return record

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(layers)]
    model.eval()
    try:
        for i in range(0, len(x), batch_size):
            model(normalize(x[i : i + batch_size], mean))
    finally:
        for h in handles:
            h.remove()
        model.train()
    n, s, sq = sums.T
    return (sq / n - (s / n) ** 2).clamp_min(0).sqrt().tolist()


def write_responses(model: ResNet, data: ImageData, path: Path, batch_size: int = 1000) -> None:
    stds = response_std(model, data.test_x, data.mean, batch_size)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["layer", "std"])
        w.writerows((i + 1, f"{s:.6g}") for i, s in enumerate(stds))
