"""The one seed derivation of every random stream of the data (CIFAR and ImageNet alike)."""
from __future__ import annotations

import torch

# Every random stream of the data, one seed each, as a pure function of (seed, position): (multiplier, offset)
SEED_STREAMS = {"step": (1_000_003, 0),  # a step's (CIFAR) or a sample position's (ImageNet) augmentation draws
                "epoch": (7919, 1)}  # an epoch's order of the training set


def seeded(stream: str, seed: int, position: int) -> torch.Generator:
    """The CPU generator of `stream` (SEED_STREAMS) at `position` for the run seed `seed`: its numbers depend on
    (seed, position) alone, so a resume needs no RNG state, and they are the same on every device (CUDA's
    generators draw other numbers from the same seed), so a CPU and a CUDA run see the same data step for step
    and a run may resume on another device. The one seed derivation of every data stream (CIFAR and ImageNet)."""
    multiplier, offset = SEED_STREAMS[stream]
    return torch.Generator().manual_seed(seed * multiplier + position + offset)
