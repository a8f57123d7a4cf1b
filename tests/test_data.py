"""Data: the safe reader on the real copy and on tampered files, download, preprocessing, batches."""
import hashlib
import os
import pickle
import socket
import tarfile

import numpy as np
import pytest
import torch
from conftest import compose, write_cifar_folder

from repro.data.cifar import BatchStream, ImageData, augment, load_cifar10, load_image_data, make_synthetic, read_batch
from repro.errors import DataError


def test_safe_reader_reads_the_real_copy(real_cifar_root):
    x, y = read_batch(real_cifar_root / "cifar-10-batches-py" / "test_batch")
    assert x.shape == (10_000, 3, 32, 32) and x.dtype == np.uint8
    assert y.shape == (10_000,) and set(np.unique(y)) == set(range(10))
    assert np.bincount(y).tolist() == [1000] * 10  # CIFAR-10's test set is balanced


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    folder = write_cifar_folder(tmp_path / "c")
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": _Evil(marker), b"labels": [0]}, protocol=2))
    with pytest.raises(DataError, match=r"unsafe pickle .*data_batch_1: refusing to load posix.system"):
        load_cifar10(tmp_path / "c")
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_shape", "bad_labels", "not_a_dict"])
def test_damaged_files_give_one_clear_error_naming_the_file(tmp_path, damage):
    folder = write_cifar_folder(tmp_path / "c")
    f = folder / "data_batch_3"
    if damage == "truncate":
        f.write_bytes(f.read_bytes()[:1000])
    elif damage == "garbage":
        f.write_bytes(b"\x00not a pickle at all" * 10)
    elif damage == "wrong_shape":
        f.write_bytes(pickle.dumps({b"data": np.zeros((5, 28 * 28), np.uint8), b"labels": [0] * 5}, protocol=2))
    elif damage == "bad_labels":
        f.write_bytes(pickle.dumps({b"data": np.zeros((5, 3072), np.uint8), b"labels": [0, 1, 2, 3, 10]}, protocol=2))
    else:
        f.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(DataError, match="data_batch_3"):
        load_cifar10(tmp_path / "c")


def test_missing_data_says_where_it_looked_and_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match=r"not found in .*nowhere.*make data"):
        load_cifar10(tmp_path / "nowhere")


def _archive(tmp_path):
    src = tmp_path / "src"
    write_cifar_folder(src)
    tar = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tar, "w:gz") as t:
        t.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return tar, hashlib.md5(tar.read_bytes()).hexdigest()


def test_download_path_fetches_extracts_and_checks_md5(tmp_path, served):
    tar, md5 = _archive(tmp_path)
    tx, ty, vx, vy = load_cifar10(tmp_path / "dl", download=True, url=f"{served}/{tar.name}", md5=md5)
    assert tx.shape == (250, 3, 32, 32) and vx.shape == (20, 3, 32, 32)
    assert (tmp_path / "dl" / "cifar-10-batches-py" / "test_batch").exists()


def test_download_with_wrong_checksum_fails_clearly(tmp_path, served):
    tar, _ = _archive(tmp_path)
    with pytest.raises(DataError, match="could not download"):
        load_cifar10(tmp_path / "dl", download=True, url=f"{served}/{tar.name}", md5="0" * 32)


def test_offline_download_fails_with_a_clear_message(tmp_path):
    with socket.socket() as s:  # a port nobody listens on: what an offline machine sees
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DataError, match=r"could not download CIFAR-10 from .*copy"):
        load_cifar10(tmp_path / "dl", download=True, url=f"http://127.0.0.1:{port}/cifar-10-python.tar.gz")


def test_per_pixel_mean_and_validation_split(tiny_cifar):
    data = load_image_data(torch.device("cpu"), **compose([f"data.root={tiny_cifar}", "data.val_size=50"]).data)
    assert data.mean.shape == (3, 32, 32)
    assert len(data.train_x) == 200 and len(data.val_x) == 50
    expected = torch.from_numpy(load_cifar10(tiny_cifar)[0][:200]).double().mean(0).div(255).float()
    assert torch.allclose(data.mean, expected)
    # The held-out images are the last 50 of the training set (§4.2's 45k/5k split, scaled).
    assert torch.equal(data.val_x, torch.from_numpy(load_cifar10(tiny_cifar)[0][200:]))


def test_the_demo_falls_back_to_the_embedded_task_only_when_cifar_is_absent(tmp_path, tiny_cifar, monkeypatch):
    import repro.demo as demo

    def offline(root):
        raise DataError("offline")

    monkeypatch.setattr(demo, "download_cifar10", offline)
    overrides, name, why = demo.choose_data(tmp_path / "none")
    assert (overrides, name) == (["data.name=deadleaves"], "deadleaves") and "could not be downloaded" in why
    assert demo.choose_data(tiny_cifar)[:2] == ([f"data.root={tiny_cifar}"], "cifar10")
    (tiny_cifar / "cifar-10-batches-py" / "test_batch").write_bytes(b"broken")
    assert demo.choose_data(tiny_cifar)[1] == "cifar10"  # a broken real set is used (and fails), never replaced
    with pytest.raises(DataError, match="test_batch"):
        load_image_data(torch.device("cpu"), **compose([f"data.root={tiny_cifar}"]).data)


def test_synthetic_task_is_deterministic_and_balanced():
    a = make_synthetic(n_train=2000, n_test=500, seed=3)
    b = make_synthetic(n_train=2000, n_test=500, seed=3)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert a[0].shape == (2000, 3, 32, 32) and a[0].dtype == np.uint8
    assert np.bincount(a[1], minlength=10).min() > 150
    assert not np.array_equal(a[0], make_synthetic(n_train=2000, n_test=500, seed=4)[0])


def _data(n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return ImageData("t", "t", x, y, x[:8], y[:8], x.float().mean(0) / 255)


def test_augmentation_keeps_shape_and_dtype_and_varies():
    data = _data()
    s = BatchStream(data, 16, seed=0)
    x0, y0 = s.batch(0)
    assert x0.shape == (16, 3, 32, 32) and x0.dtype == torch.float32 and y0.dtype == torch.int64
    x0b, _ = s.batch(0)
    assert torch.equal(x0, x0b)  # a pure function of (seed, step): what makes resume exact
    assert not torch.equal(x0, BatchStream(data, 16, seed=1).batch(0)[0])


def test_crop_and_flip_are_exact():
    x = torch.arange(3 * 32 * 32, dtype=torch.float32).reshape(1, 3, 32, 32).remainder(256).to(torch.uint8)
    mean = torch.zeros(3, 32, 32)
    same = augment(x, mean, torch.tensor([[4], [4]]), torch.tensor([False]))
    assert torch.equal(same, x.float() / 255)  # offset 4 = no shift
    shifted = augment(x, mean, torch.tensor([[0], [8]]), torch.tensor([False]))
    # row offset 0 = 4 rows of padding on top; column offset 8 = 4 columns of padding on the right
    assert torch.equal(shifted[0, :, 4:, :28], x[0, :, :28, 4:].float() / 255)
    assert not shifted[0, :, :4].any() and not shifted[0, :, :, 28:].any()
    flipped = augment(x, mean, torch.tensor([[4], [4]]), torch.tensor([True]))
    assert torch.equal(flipped, x.float().flip(3) / 255)


def test_every_sample_is_seen_once_per_epoch():
    data = _data(n=40)
    s = BatchStream(data, 16, seed=0)
    seen = torch.cat([s.indices(k) for k in range(5)])  # 80 samples = 2 epochs, batches straddle them
    assert sorted(seen[:40].tolist()) == list(range(40)) and sorted(seen[40:].tolist()) == list(range(40))
    assert s.epoch(5) == 2.0


def _batch_drawn_per_step(s: BatchStream, step: int):
    """The batch of `step` as the stream drew it before the draw window: one generator, one upload, per step."""
    from repro.data.cifar import PAD
    from repro.data.seeds import seeded

    g = seeded("step", s.seed, step)
    offsets = torch.randint(0, 2 * PAD + 1, (2, s.batch_size), generator=g)[:, s.mine]
    flips = (torch.rand(s.batch_size, generator=g) < 0.5)[s.mine]
    idx = s.indices(step)[s.mine]
    return augment(s.data.train_x[idx], s.data.mean, offsets, flips), s.data.train_y[idx]


@pytest.mark.parametrize("rank,world", [(0, 1), (1, 2)])
def test_the_draw_window_gives_the_per_step_batches_across_boundaries_and_resumes(rank, world):
    data = _data(n=40)  # 40 images, batches of 16: batches straddle epochs
    s = BatchStream(data, 16, seed=3, rank=rank, world=world, window=4)
    order = [*range(11), 5, 6, 7, 2]  # through two window boundaries (4, 8), then jumps back inside and before
    for step in order:
        x, y = s.batch(step)
        want_x, want_y = _batch_drawn_per_step(s, step)
        assert torch.equal(x, want_x) and torch.equal(y, want_y), step
    resumed = BatchStream(data, 16, seed=3, rank=rank, world=world, window=4)  # a resume at step 6
    for step in range(6, 13):
        resumed.prepare(step)
        assert torch.equal(resumed.take()[0], _batch_drawn_per_step(s, step)[0]), step
    assert resumed.begin == 10 and int(resumed.pos) == 3  # one refill at 10; the counter moved on device


def test_taking_a_batch_is_device_work_only(monkeypatch):
    """Between window refills, a step makes no host-to-device copy and draws no random numbers on the host."""
    data = _data(n=40)
    s = BatchStream(data, 16, seed=0, window=8)
    s.prepare(0)
    calls = []
    monkeypatch.setattr(torch, "randint", lambda *a, **k: calls.append("randint"))
    monkeypatch.setattr(torch.Tensor, "to", lambda *a, **k: calls.append("to"))
    monkeypatch.setattr(torch.Tensor, "copy_", lambda *a, **k: calls.append("copy_"))
    for step in range(1, 8):
        s.take()
        s.prepare(step)
    assert calls == []
