"""Shared fixtures: the real CIFAR-10 copy beside the checkout, tiny data sets in the exact on-disk
format, and a helper that composes the real Hydra configs (shrunk) for training runs."""
from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CIFAR = SHARED / "cifar10"
IMAGENETTE = SHARED / "imagenette"


@pytest.fixture(scope="session")
def cifar_root() -> Path:
    if not (CIFAR / "cifar-10-batches-py" / "data_batch_1").exists():
        pytest.skip(f"real CIFAR-10 copy not found at {CIFAR} (CI has ../shared beside the checkout)")
    return CIFAR


def write_cifar_folder(root: Path, n_train: int = 50, n_test: int = 20, seed: int = 0) -> Path:
    """A tiny CIFAR-10 in the exact cifar-10-batches-py format (python-2 style pickles, bytes keys)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in files:
        n = n_test if name == "test_batch" else n_train
        batch = {b"batch_label": name.encode(), b"labels": rng.integers(0, 10, n).tolist(),
                 b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [f"class{i}".encode() for i in range(10)], b"num_cases_per_batch": n_train}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


@pytest.fixture
def tiny_cifar(tmp_path) -> Path:
    write_cifar_folder(tmp_path / "cifar")
    return tmp_path / "cifar"


def compose(overrides: list[str]):
    """The real config tree, composed with `overrides` (as `python -m repro.train` would)."""
    from hydra import compose as hcompose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "experiments"), version_base="1.3"):
        return hcompose("config", overrides=overrides, return_hydra_config=False)


def tiny_run_overrides(results: Path, cifar: Path, *extra: str) -> list[str]:
    return ["exp=smoke", f"results_dir={results}", f"data.root={cifar}", "exp_name=t", *extra]


def python() -> str:
    return sys.executable
