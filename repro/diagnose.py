"""Why deeper plain nets train worse, measured: gradient and signal diagnostics per layer (`repro-diagnose`).

§4.1 says the degradation is "unlikely to be caused by vanishing gradients": BN keeps the forward signals at
non-zero variance and "the backward propagated gradients exhibit healthy norms"; it shows no figure for either.
This module measures both, for nets at initialisation (any seeds: the seed's He init, as a run of that seed
starts) and for trained ones (a finished run's `model.pt`, or a training checkpoint), on fixed batches of the
training images (the first `batches x batch_size`, mean-subtracted, no augmentation), in training mode (BN on
batch statistics, as during training), on a copy of the net (its BN running statistics untouched).

One row per weighted layer (the paper's layers: the first conv, every conv of the blocks, the fc; shortcut
projections are not layers, as in the paper's depth), in `diagnostics.csv` (repro.train.diagnostics.COLUMNS; a metric a layer does not
have is empty). Every value is the mean over the batches:
  act_grad_norm      ||dL/dy|| for the layer's output y: a conv's BN output (before the ReLU or the addition),
                     the fc's logits. L is the batch-mean cross-entropy, as in training.
  out_std            std of y (the BN output: a "response" of Fig. 7, here in training mode)
  dead_relu          fraction of the ReLU units after this layer (channel x position) that are zero for every
                     image of the batch (after the block's addition for a block's last conv)
  weight_rel_grad    ||dL/dW|| / ||W|| of the layer's weight (BN makes the raw gradient depend on ||W||;
                     the relative one does not); eff_step = lr x weight_rel_grad, the relative size of one SGD step
On the row of a block's last conv (and, for the stem, on the first conv's row), the block's output x_out, the
residual stream (for a plain net, its block outputs):
  stream_grad_norm   ||dL/dx_out||
  stream_std         std of x_out
  block_gain         ||dL/dx_in|| / ||dL/dx_out||: how much the block scales the gradient on its way back to
                     the input (the "1 + F'(x) >= 1" argument says >= 1 for a residual block; the 2015 block has a
                     ReLU after the addition, which can make it smaller)
  branch_ratio       std of the branch's output (its last BN) over the std of the shortcut's (residual blocks)

`python -m repro.diagnose --nets plain-20,plain-56,resnet-20,resnet-56 --seeds 0-4` (at initialisation), or
`python -m repro.diagnose results/fig6_short/cifar10-plain-56-s0 ...` (run folders with `model.pt`, or
checkpoint files). During training: `diagnostics.every=N` (repro.train.diagnostics.Watch). The figures and verdicts
that read diagnostics.csv: repro.plots.why (`repro-plots gradients`, `signal`; the report's 'Is it vanishing
gradients?').
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch
from omegaconf import OmegaConf

from repro.data.cifar import EMBEDDED, find_cifar_dir, load_image_data
from repro.errors import ConfigError, ResultsError, command
from repro.models import arch_for, build_model
from repro.names import display_name
from repro.results import CHECKPOINT, CONFIG, MODEL
from repro.train.diagnostics import Subject, diagnose, write_csv

NET_NAME = re.compile(r"^(plain|resnet)([ABC]?)-(\d+)$", re.IGNORECASE)


def parse_nets(text: str) -> list[tuple[int, str]]:
    """'plain-20,resnet-56,resnetB-32' -> [(20, 'none'), (56, 'A'), (32, 'B')] (names as repro.names)."""
    nets = []
    for name in (t.strip() for t in text.split(",") if t.strip()):
        m = NET_NAME.match(name)
        if not m:
            raise ConfigError(f"--nets: {name!r} is not a net name; use plain-<depth> or resnet-<depth> (option A), "
                              f"resnetB-<depth>, resnetC-<depth>, e.g. plain-20,resnet-56")
        kind, option, depth = m.groups()
        nets.append((int(depth), "none" if kind.lower() == "plain" else (option.upper() or "A")))
    return nets


def parse_seeds(text: str) -> list[int]:
    """'0-4' -> [0, 1, 2, 3, 4]; '0,3' -> [0, 3]."""
    try:
        seeds: list[int] = []
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            seeds += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
        return seeds
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: use a range or a list, e.g. 0-4 or 0,2,5") from None


def from_folder(path: Path) -> tuple[Subject, dict]:
    """A run folder (its model.pt, else its checkpoint) or a checkpoint file -> (Subject, the run's config)."""
    path = Path(path)
    run_dir = path.parent if path.is_file() else path
    if not (run_dir / CONFIG).exists():
        raise ResultsError(f"{path}: no {CONFIG} beside it; give a run folder or a checkpoint inside one")
    cfg = OmegaConf.to_container(OmegaConf.load(run_dir / CONFIG), resolve=True)
    if cfg["model"]["family"] != "cifar10":
        raise ConfigError(f"{run_dir}: a {cfg['model']['family']} run; repro-diagnose measures the CIFAR-10 "
                          f"family (the nets of Fig. 6)")
    file = path if path.is_file() else (run_dir / MODEL if (run_dir / MODEL).exists() else run_dir / CHECKPOINT)
    if not file.exists():
        raise ResultsError(f"{run_dir} has neither {MODEL} nor {CHECKPOINT} (save_model=false, and no checkpoint "
                           f"left); rerun with save_model=true")
    try:
        saved = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ResultsError(f"cannot load {file} ({type(e).__name__}: {e})") from None
    optim = cfg["optim"]
    if "model" in saved and "state" in saved:  # a training checkpoint (repro.train.checkpoint)
        state, step, source = saved["model"], int(saved["state"]["step"]), "checkpoint"
    else:
        state, step, source = saved, int(optim["total_steps"]), "model.pt"
    lr = optim["lr"] * optim["gamma"] ** sum(step >= m * optim["total_steps"] for m in optim.get("milestones") or [])
    m = cfg["model"]
    return Subject(m["depth"], m["shortcut"], m.get("width"), int(cfg["seed"]), step, source, state, lr), cfg


ARCH_COLUMNS = ["family", "net", "depth", "shortcut", "block", "blocks_per_stage", "weighted_layers", "params",
                "macs"]


def architectures() -> list[dict]:
    """Table 1 (ImageNet, 224x224, shortcut B for the bottleneck nets as in the paper, A for 18/34) and Table 6's
    CIFAR-10 nets (32x32, option A), counted from our own modules: weighted layers, parameters, multiply-adds."""
    from repro.models import IMAGENET_DEPTHS, count_macs, count_params, weighted_layers
    rows = []
    nets = [("imagenet", d, "A" if d < 50 else "B", 224) for d in IMAGENET_DEPTHS]
    nets += [("imagenet", d, "none", 224) for d in (18, 34)]
    nets += [("cifar10", d, "A", 32) for d in (20, 32, 44, 56, 110, 1202)]
    for family, depth, shortcut, size in nets:
        m = build_model(family, depth, shortcut)
        rows.append({"family": family, "net": display_name(depth, shortcut), "depth": depth, "shortcut": shortcut,
                     "block": m.arch.block, "blocks_per_stage": "/".join(map(str, m.arch.blocks_per_stage)),
                     "weighted_layers": weighted_layers(m), "params": count_params(m), "macs": count_macs(m, size)})
    return rows


@command  # bad input, Ctrl-C, a full disk: one line
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="repro-diagnose", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", type=Path, help="run folders (model.pt or checkpoint) or checkpoint files")
    p.add_argument("--nets", default="", help="nets at initialisation, e.g. plain-20,plain-56,resnet-20,resnet-56")
    p.add_argument("--seeds", default="0", help="their seeds (He init), e.g. 0-4 (default 0)")
    p.add_argument("--width", type=int, default=None, help="first-stage filters (default the paper's 16)")
    p.add_argument("--data", default="auto", choices=["auto", "cifar10", *EMBEDDED],
                   help="the batches' images: auto = CIFAR-10 at --root if there, else the embedded dead-leaves task")
    p.add_argument("--root", default="data/cifar10", help="the folder holding cifar-10-batches-py")
    p.add_argument("--batches", type=int, default=2, help="fixed batches averaged over (default 2)")
    p.add_argument("--batch-size", type=int, default=128, help="images per batch (§4.2: 128)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default torch's)")
    p.add_argument("--out", type=Path, default=Path("diagnostics.csv"),
                   help="the CSV written (default ./diagnostics.csv)")
    p.add_argument("--architectures", type=Path, default=None, metavar="CSV",
                   help="write Table 1's (and Table 6's) layers, parameters and multiply-adds of our nets and stop")
    args = p.parse_args(argv)
    if args.architectures:
        write_csv(architectures(), args.architectures, ARCH_COLUMNS)
        print(f"[diagnose] the paper's architectures, counted -> {args.architectures}")
        return 0
    if not args.runs and not args.nets:
        p.error("give --nets (at initialisation) or run folders")
    if args.batches < 1 or args.batch_size < 2:
        raise ConfigError(f"--batches {args.batches} --batch-size {args.batch_size}: need >= 1 batch of >= 2 images")
    if args.threads:
        torch.set_num_threads(args.threads)
    nets = parse_nets(args.nets)
    for depth, _ in nets:
        try:
            arch_for("cifar10", depth, width=args.width)
        except ValueError as e:
            raise ConfigError(f"--nets: {display_name(depth, 'none')}: {e}") from None
    subjects = [Subject(d, sc, args.width, seed) for d, sc in nets for seed in parse_seeds(args.seeds)]
    for run in args.runs:
        subjects.append(from_folder(run)[0])
    name = args.data
    if name == "auto":
        name = "cifar10" if find_cifar_dir(Path(args.root).expanduser()) else "deadleaves"
    data = load_image_data(torch.device("cpu"), name=name, root=args.root)
    print(f"[diagnose] data: {data.source}; {len(subjects)} nets, {args.batches} batches of {args.batch_size}",
          flush=True)
    rows = diagnose(subjects, data, args.batches, args.batch_size, progress=lambda s: print(s, flush=True))
    write_csv(rows, args.out)
    print(f"[diagnose] {len(rows)} rows -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
