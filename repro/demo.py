"""`make demo`: train the demo sweep (exp=demo) and write its figure, table and report.

    python -m repro.demo [--cifar10 DIR | --embedded] [extra Hydra overrides...]     (or: repro-demo ...)

Data, in this order: CIFAR-10 at DIR; else a download into DIR when online; else the embedded dead-leaves
task (repro.data.deadleaves: natural images' spectrum and occlusion, made from a seed; --embedded: that task,
without looking). The choice and the reason are printed first and recorded in
every run's meta.json and the report.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from repro.data.cifar import download_cifar10, find_cifar_dir
from repro.errors import INTERRUPTED, DataError, command

EMBEDDED_DEFAULT = "deadleaves"  # the offline demo's task (docs/demo.md: why dead leaves, not the sinusoid task)


def choose_data(root: Path, embedded: bool = False) -> tuple[list[str], str, str]:
    """(Hydra overrides, data name, why) for the demo's data set."""
    if embedded:
        return [f"data.name={EMBEDDED_DEFAULT}"], EMBEDDED_DEFAULT, f"the embedded {EMBEDDED_DEFAULT} task (--embedded)"
    if find_cifar_dir(root) is not None:
        return [f"data.root={root}"], "cifar10", f"CIFAR-10 found at {root}"
    try:
        download_cifar10(root)
        return [f"data.root={root}"], "cifar10", f"CIFAR-10 downloaded into {root}"
    except DataError as e:
        why = (f"CIFAR-10 is not at {root} and could not be downloaded ({e}); using the embedded dead-leaves task "
               f"instead. For the real thing: make demo CIFAR10=/path/to/folder-with-cifar-10-batches-py")
        return [f"data.name={EMBEDDED_DEFAULT}"], EMBEDDED_DEFAULT, why


def train_sweep(cmd: list[str]) -> int:
    """The training sweep as a child process; its exit status. A Ctrl-C reaches its runs once, from here: the
    sweep runs in its own process group (so the terminal's SIGINT comes to this process alone) and each SIGINT
    is handed on to that group (the sweep's process and the parallel launcher's workers, which train), so the
    first one stops every run at its step with a checkpoint and a second one stops them at once."""
    child = subprocess.Popen(cmd, process_group=0)

    def hand_on(signum, frame) -> None:
        with contextlib.suppress(ProcessLookupError):  # the sweep ended meanwhile: nothing to stop
            os.killpg(child.pid, signal.SIGINT)

    previous = signal.signal(signal.SIGINT, hand_on)
    try:
        return child.wait()
    finally:
        signal.signal(signal.SIGINT, previous)


def init_diagnostics(runs: Path, batches: int = 2, batch_size: int = 128) -> Path:
    """The demo's nets at initialisation, per layer (repro.train.diagnostics: the report's gradient figure; seconds):
    each run's net and seed, on `batches` x `batch_size` images of its data (an embedded task: that many images
    made from its seed, the same distribution as the training set) -> runs/diagnostics.csv."""
    import torch
    from omegaconf import OmegaConf

    from repro.data.cifar import EMBEDDED, ImageData, load_image_data
    from repro.results import CONFIG
    from repro.train.diagnostics import DIAGNOSTICS, Subject, diagnose, write_csv

    configs = [OmegaConf.load(c) for c in sorted(runs.glob(f"*/{CONFIG}"))]
    if not configs:
        raise DataError(f"no runs under {runs} to diagnose")
    d = configs[0].data
    n = batches * batch_size
    if d.name in EMBEDDED:
        x, y, tx, ty = (torch.from_numpy(a) for a in EMBEDDED[d.name](n_train=n, n_test=10, seed=d.synthetic_seed))
        data = ImageData(d.name, f"{n} images of the embedded {d.name} task (seed {d.synthetic_seed})", x, y, tx, ty,
                         x.double().mean(0).div(255).float())
    else:
        data = load_image_data(torch.device("cpu"), name=d.name, root=d.root)
    subjects = sorted({Subject(c.model.depth, c.model.shortcut, c.model.width, c.seed) for c in configs},
                      key=lambda s: (s.shortcut != "none", s.depth, s.seed))
    rows = diagnose(subjects, data, batches, batch_size, progress=lambda s: None)
    write_csv(rows, runs / DIAGNOSTICS)
    return runs / DIAGNOSTICS


@command  # Ctrl-C, a full disk, a read-only folder: one line
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m repro.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar10", type=Path, default=Path("data/cifar10"), help="folder holding cifar-10-batches-py")
    p.add_argument("--embedded", action="store_true",
                   help="the embedded dead-leaves task, without looking for CIFAR-10")
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--plots", type=Path, default=Path("plots"))
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for the runs (e.g. seed=1)")
    args = p.parse_args(argv)
    t0 = time.time()
    data_over, name, why = choose_data(args.cifar10, args.embedded)
    print(f"[demo] data: {why}", flush=True)
    cmd = [sys.executable, "-m", "repro.train", "-m", "exp=demo", f"results_dir={args.results}", *data_over,
           *args.overrides]
    print("[demo] " + " ".join(cmd[1:]), flush=True)
    if (rc := train_sweep(cmd)) == INTERRUPTED:
        print("[demo] interrupted (Ctrl-C): the runs stopped where they stood; rerun the same command to resume "
              "them (finished runs are skipped)", file=sys.stderr)
        return INTERRUPTED
    if rc != 0:
        print("[demo] training failed; see the messages above", file=sys.stderr)
        return 1
    from repro.plots.report import write_report

    runs, out = args.results / f"demo-{name}", args.plots / f"demo-{name}"
    init_diagnostics(runs)
    write_report(args.results, out, [runs], demo=True)
    print(f"[demo] data: {why}")
    print(f"[demo] results: {runs}/   figure: {out / 'degradation.png'}   table: {out / 'final_errors.md'}")
    print(f"[demo] report: {out / 'report.md'} and {out / 'report.html'}   ({time.time() - t0:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
