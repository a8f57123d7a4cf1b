"""`repro-data` (`python -m repro.fetch`, `make data`, `make imagenette`): the data sets the suite downloads.

    python -m repro.fetch cifar10 [--root data/cifar10]                  # the official archive, md5-checked
    python -m repro.fetch imagenette [--root data] [--size 160px|320px]  # fast.ai's imagenette2, md5-checked

Each lands in the layout the loaders read and prints the data.root to use; offline, or a corrupt archive, is one
line saying where to put the files (a DataError: exit 2).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from repro.data.cifar import load_cifar10
from repro.data.imagenet import IMAGENETTE, download_imagenette
from repro.errors import command


@command  # Ctrl-C, a full disk, a read-only folder: one line
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="repro-data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=["cifar10", "imagenette"])
    p.add_argument("--root", type=Path, default=None, help="where to put it (default: data/cifar10, or data)")
    p.add_argument("--size", default="160px", choices=sorted(IMAGENETTE), help="Imagenette's release")
    args = p.parse_args(argv)
    if args.dataset == "cifar10":  # offline or corrupt: a DataError, one line (repro.errors.command)
        root = args.root or Path("data/cifar10")
        load_cifar10(root, download=True)
        print(f"CIFAR-10 ready in {root} (data.root={root})")
    else:
        download_imagenette(args.root or Path("data"), args.size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
