"""Per-layer gradient and signal diagnostics of a net on fixed batches (repro.diagnose's measurement, also taken
during training with `diagnostics.every=N`): the columns are documented in repro/diagnose.py's docstring.
Measured on a copy of the net, in training mode, with the random state restored: the training run it is taken
from is not changed in any way (tests/test_diagnose.py: metrics.csv is byte-identical with it on or off)."""
from __future__ import annotations

import copy
import csv
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from repro.data.cifar import ImageData, normalize
from repro.errors import ConfigError, DataError
from repro.models import Block, ResNet, build_model
from repro.names import display_name
from repro.train.rundir import atomic_write

COLUMNS = ["net", "depth", "shortcut", "width", "seed", "step", "source", "data", "layer", "name", "stage",
           "act_grad_norm", "out_std", "dead_relu", "weight_rel_grad", "eff_step",
           "stream_grad_norm", "stream_std", "block_gain", "branch_ratio"]
DIAGNOSTICS = "diagnostics.csv"
LR = 0.1  # §4.2: the lr of the first phase, for eff_step at initialisation


def fixed_batches(data: ImageData, batches: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first batches x batch_size training images, mean-subtracted (§4.2), no augmentation."""
    n = batches * batch_size
    if n > len(data.train_x):
        raise DataError(f"{batches} batches of {batch_size} need {n} images; the data has {len(data.train_x)}")
    x, y = normalize(data.train_x[:n], data.mean), data.train_y[:n]
    return list(zip(x.split(batch_size), y.split(batch_size)))


def _layers(model: ResNet) -> list[tuple[str, int, nn.Module, Block | None]]:
    """(name, stage, module whose output is the layer's y, the block whose last layer it is) in layer order."""
    out = [("conv1", 0, model.stem[0], None)]
    for s, stage in enumerate(model.stages, start=1):
        for b, block in enumerate(stage, start=1):
            for i, layer in enumerate(block.layers, start=1):
                out.append((f"conv{s + 1}_{b}.{i}", s, layer, block if i == len(block.layers) else None))
    out.append(("fc", len(model.stages) + 1, model.fc, None))
    return out


def measure(model: ResNet, batches: list[tuple[torch.Tensor, torch.Tensor]], lr: float = LR) -> list[dict]:
    """The module docstring's metrics of `model` (not modified: measured on a copy), one dict per layer."""
    net = copy.deepcopy(model).train()
    for m in net.modules():  # in-place ReLUs would overwrite the BN outputs whose gradients are read
        if isinstance(m, nn.ReLU):
            m.inplace = False
    layers = _layers(net)
    blocks = [b for _, _, _, b in layers if b is not None]
    seen: dict[str, torch.Tensor] = {}

    def keep(key):
        def hook(module, inputs, out):
            out.retain_grad()
            seen[key] = out
            if isinstance(module, Block):
                inputs[0].retain_grad()
                seen[key + ".in"] = inputs[0]
        return hook

    handles = [m.register_forward_hook(keep(f"y{i}")) for i, (_, _, m, _) in enumerate(layers)]
    handles += [b.register_forward_hook(keep(f"b{j}")) for j, b in enumerate(blocks)]
    handles += [b.shortcut.register_forward_hook(keep(f"s{j}")) for j, b in enumerate(blocks) if b.shortcut is not None]
    handles.append(net.stem.register_forward_hook(keep("stem")))
    sums: list[dict[str, float]] = [{} for _ in layers]

    def add(i: int, key: str, value: float) -> None:
        sums[i][key] = sums[i].get(key, 0.0) + value

    try:
        for x, y in batches:
            net.zero_grad(set_to_none=True)
            seen.clear()
            F.cross_entropy(net(x), y).backward()
            j = 0
            for i, (_, _, module, block) in enumerate(layers):
                out = seen[f"y{i}"]
                add(i, "act_grad_norm", out.grad.norm().item())
                weight = module.weight if isinstance(module, nn.Linear) else module[0].weight
                add(i, "weight_rel_grad", (weight.grad.norm() / weight.norm()).item())
                if isinstance(module, nn.Linear):
                    continue
                add(i, "out_std", out.std().item())
                after = seen["stem"] if i == 0 else (seen[f"b{j}"] if block is not None else F.relu(out))
                add(i, "dead_relu", (after <= 0).all(0).float().mean().item())
                if i == 0:
                    add(i, "stream_grad_norm", seen["stem"].grad.norm().item())
                    add(i, "stream_std", seen["stem"].std().item())
                if block is not None:
                    bout, bin_ = seen[f"b{j}"], seen[f"b{j}.in"]
                    add(i, "stream_grad_norm", bout.grad.norm().item())
                    add(i, "stream_std", bout.std().item())
                    add(i, "block_gain", (bin_.grad.norm() / bout.grad.norm()).item())
                    if block.shortcut is not None:
                        add(i, "branch_ratio", (out.std() / seen[f"s{j}"].std()).item())
                    j += 1
    finally:
        for h in handles:
            h.remove()
    rows = []
    for i, (name, stage, _, _) in enumerate(layers):
        row = {"layer": i + 1, "name": name, "stage": stage}
        row.update({k: v / len(batches) for k, v in sums[i].items()})
        if "weight_rel_grad" in row:
            row["eff_step"] = lr * row["weight_rel_grad"]
        rows.append(row)
    return rows


@dataclass(frozen=True)
class Subject:
    """One net to measure: built from (depth, shortcut, width, seed), with these weights if given."""

    depth: int
    shortcut: str
    width: int | None
    seed: int
    step: int = 0
    source: str = "init"  # init, model.pt, checkpoint
    state: dict | None = field(default=None, compare=False, hash=False)
    lr: float = LR

    @property
    def net(self) -> str:
        return display_name(self.depth, self.shortcut)


def subject_model(s: Subject, num_classes: int = 10) -> ResNet:
    """The CIFAR-family net of `s`: its seed's He init (as repro.train.run builds it), or its saved weights."""
    torch.manual_seed(s.seed)
    model = build_model("cifar10", s.depth, s.shortcut, num_classes=num_classes, width=s.width)
    if s.state is not None:
        model.load_state_dict(s.state)
    return model


def diagnose(subjects: list[Subject], data: ImageData, batches: int = 2, batch_size: int = 128,
             progress=print) -> list[dict]:
    """Rows (COLUMNS) for every subject, measured on the same fixed batches of `data`."""
    fixed = fixed_batches(data, batches, batch_size)
    rows = []
    for k, s in enumerate(subjects, start=1):
        model = subject_model(s, data.num_classes)
        head = {"net": s.net, "depth": s.depth, "shortcut": s.shortcut, "width": s.width or 16, "seed": s.seed,
                "step": s.step, "source": s.source, "data": data.name}
        rows += [{**head, **r} for r in measure(model, fixed, s.lr)]
        progress(f"[diagnose] {k}/{len(subjects)} {s.net} seed {s.seed} ({s.source}, step {s.step})")
    return rows


def write_csv(rows: list[dict], out: Path, columns: list[str] = COLUMNS) -> None:
    """`rows` as a CSV (floats to 6 significant digits; a missing value empty), written atomically."""
    lines = [",".join(columns)]
    for r in rows:
        lines.append(",".join("" if r.get(c) is None else (f"{r[c]:.6g}" if isinstance(r[c], float) else str(r[c]))
                              for c in columns))
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, ("\n".join(lines) + "\n").encode())


class Watch:
    """`diagnostics.every=N` (operational, off by default): `measure`'s rows at step 0 (a fresh run) and at every
    N-th evaluation, into run_dir/diagnostics.csv, on a copy of the model with the random state restored, so
    the run itself is unchanged. CIFAR-style data only (the fixed batches are its first training images)."""

    def __init__(self, path: Path, every: int, eval_every: int, total: int, batches, head: dict, rows: list[dict]):
        self.path, self.every, self.eval_every, self.total = path, every, eval_every, total
        self.batches, self.head, self.rows = batches, head, rows
        self.seconds = 0.0  # spent measuring in this process (meta.json's diagnostics_s: its cost, beside wall_time)

    @classmethod
    def start(cls, cfg, data: ImageData | None, run_dir: Path | None, step: int) -> "Watch | None":
        """None when off (or not the process that writes results); rows already written beyond the checkpoint's
        `step` (a run killed between its row and its checkpoint) are dropped."""
        opts = cfg.get("diagnostics") or {}
        every = int(opts.get("every") or 0)
        if not every or run_dir is None:
            return None
        if data is None:
            raise ConfigError("diagnostics.every needs CIFAR-style data (its fixed batches are the first training "
                              "images); set diagnostics.every=0 for this run")
        path = run_dir / DIAGNOSTICS
        rows = [r for r in read_csv(path) if int(r["step"]) <= step] if path.exists() else []
        m = cfg.model
        head = {"net": display_name(m.depth, m.shortcut), "depth": m.depth, "shortcut": m.shortcut,
                "width": m.width or 16, "seed": cfg.seed, "source": "training", "data": data.name}
        batches = fixed_batches(data, int(opts.get("batches") or 2), cfg.optim.batch_size)
        return cls(path, every, cfg.eval_every, cfg.optim.total_steps, batches, head, rows)

    def due(self, step: int) -> bool:
        """At step 0, and at every `every`-th evaluation point (and the last)."""
        if step == 0 or step == self.total:
            return True
        return step % self.eval_every == 0 and (step // self.eval_every) % self.every == 0

    def take(self, model: ResNet, step: int, lr: float) -> bool:
        """Measure `model` at `step` if due (and not yet measured); whether it did."""
        if not self.due(step) or any(int(r["step"]) == step for r in self.rows):
            return False
        t0 = time.perf_counter()
        device = next(model.parameters()).device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            measured = measure(model, self.batches, lr)
        self.rows += [{**self.head, "step": step, **r} for r in measured]
        write_csv(self.rows, self.path)
        self.seconds += time.perf_counter() - t0
        return True


def read_csv(path: Path) -> list[dict]:
    """diagnostics.csv's rows, values as written (strings)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
