"""The ImageNet path: Table 1 complexity, the paper's augmentation, 10-crop testing, folder errors, and a
2-process data-parallel run (gloo, CPU) that matches a single process with the same global batch."""
import os
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import IMAGENETTE, ROOT, python
from PIL import Image

from repro.data.imagenet import (
    CROP,
    StreamDataset,
    draw,
    eval_view,
    evaluate_crops,
    load_imagefolder,
    scaled,
    tail,
    train_loader,
    train_view,
)
from repro.errors import DataError
from repro.models import SHORTCUTS, build_model, count_macs, count_params

TABLE1_GMACS = {18: 1.8, 34: 3.6, 50: 3.8, 101: 7.6, 152: 11.3}


@pytest.mark.parametrize("depth", sorted(TABLE1_GMACS))
def test_multiply_adds_match_table1(depth):
    macs = count_macs(build_model("imagenet", depth, "B"), 224) / 1e9
    assert macs == pytest.approx(TABLE1_GMACS[depth], rel=0.03)


def test_cifar_multiply_adds_match_paper_md():
    expected = {20: 40.6, 32: 68.9, 44: 97.2, 56: 125.5, 110: 252.9}  # paper.md "Compute", millions
    for depth, m in expected.items():
        assert count_macs(build_model("cifar10", depth, "A"), 32) / 1e6 == pytest.approx(m, abs=0.06)


@pytest.mark.parametrize("depth", [18, 34, 50])
def test_shortcut_options_order_parameters(depth):
    n = {s: count_params(build_model("imagenet", depth, s)) for s in SHORTCUTS}
    assert n["none"] == n["A"] < n["B"] < n["C"]


def write_folder(root, classes=2, per_class=4, size=(96, 80), seed=0):
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for c in range(classes):
            d = root / split / f"n0000000{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                img = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(img).save(d / f"img_{i}.JPEG", quality=90)
    return root


def test_train_augmentation_output_size_and_range():
    img = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 300, 500), dtype=np.uint8))
    d = draw(0, 0)
    view = train_view(img, d)
    assert view.shape == (3, CROP, CROP) and view.dtype == torch.uint8  # what a worker hands over
    x = tail(view[None], torch.tensor([d.alpha]), 0.1, torch.device("cpu"))[0]
    assert x.dtype == torch.float32 and -1.0 < x.min() < 0 < x.max() < 1.0  # [0, 1] minus the mean, plus lighting
    assert not torch.equal(view, train_view(img, draw(0, 1)))  # random scale, crop, flip per position
    assert draw(0, 1) != draw(1, 1) and draw(0, 1) == draw(0, 1)  # a pure function of (seed, position)
    assert {draw(0, p).flip for p in range(40)} == {True, False}
    scales = [draw(0, p).scale for p in range(2000)]
    assert min(scales) == 256 and max(scales) == 480  # §3.4's [256, 480], both ends reached


def test_ten_crop_gives_ten_views_and_averages_logits(tmp_path):
    img = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 256, 300), dtype=np.uint8))
    views = eval_view(img, 10)
    assert views.shape == (10, 3, CROP, CROP) and views.dtype == torch.uint8
    assert torch.equal(views[9], views[4].flip(-1))  # 5 crops, then the same 5 of the flipped image
    assert torch.equal(eval_view(img, 1), views[4])  # the centre crop
    root = write_folder(tmp_path / "f", classes=8, per_class=2, size=(300, 256))

    class Scripted(torch.nn.Module):
        """Logits fixed per image and view (from the pixel sum, a view index and the image order), so
        the expected top-1/top-5 errors are computed here by hand, not by the code under test."""

        def __init__(self, table):
            super().__init__()
            self.table, self.calls = table, 0

        def forward(self, x):
            out = self.table[self.calls: self.calls + len(x)]
            self.calls += len(x)
            return out

    n, views = 16, 10
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(n, views, 8, generator=g)
    labels = torch.tensor([i // 2 for i in range(n)])  # ImageFolder order: class folders sorted, 2 images each
    mean = logits.mean(1)  # 10-crop testing averages the 10 views' logits
    top5 = mean.topk(5, 1).indices
    expect1 = float((top5[:, 0] != labels).float().mean())
    expect5 = float((top5 != labels[:, None]).all(1).float().mean())
    assert 0 < expect5 < expect1 < 1  # the check can tell top-1 from top-5 and both from 0
    result = evaluate_crops(Scripted(logits.flatten(0, 1)), load_imagefolder(name="x", root=root, workers=0), 10,
                            batch_size=20, device=torch.device("cpu"))
    assert result["crops"] == 10 and result["images"] == n
    assert result["top1_err"] == pytest.approx(expect1) and result["top5_err"] == pytest.approx(expect5)


def test_missing_and_malformed_folders_give_clear_errors(tmp_path):
    cfg = lambda root: {"name": "x", "root": root}  # noqa: E731
    with pytest.raises(DataError, match=r"train folder not found: .*nowhere/train"):
        load_imagefolder(**cfg(tmp_path / "nowhere"))
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="no class folders"):
        load_imagefolder(**cfg(tmp_path / "empty"))
    root = write_folder(tmp_path / "f")
    (root / "train" / "n00000009").mkdir()
    with pytest.raises(DataError, match="without images.*n00000009"):
        load_imagefolder(**cfg(root))


def test_the_shared_imagenette_sample_loads(tmp_path):
    if not (IMAGENETTE / "train").exists():
        pytest.skip("../shared/data/imagenette not present")
    data = load_imagefolder(name="imagenette", root=IMAGENETTE)
    assert (len(data.train), len(data.val), data.num_classes) == (1000, 300, 10)
    x, alpha, y = StreamDataset(data.train, seed=0)[0]
    assert x.shape == (3, CROP, CROP) and x.dtype == torch.uint8 and alpha.shape == (3,) and 0 <= y < 10
    held = load_imagefolder(name="imagenette", root=IMAGENETTE, val_size=100)  # for the plateau rule
    assert (len(held.train), len(held.held_out), len(held.val)) == (900, 100, 300)
    assert sorted(held.held_out[i][1] for i in range(0, 100, 10)) == list(range(10))  # spread over the classes


def _run(cmd, env=None):
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    assert out.returncode == 0, out.stdout[-1500:] + out.stderr[-3000:]
    return out


def test_two_process_gloo_run_matches_one_process_with_the_same_global_batch(tmp_path):
    root = write_folder(tmp_path / "data", classes=2, per_class=8)
    common = ["exp=fig4_imagenette", f"data.root={root}", "data.workers=0", "model.width=8", "optim.batch_size=8",
              "optim.total_steps=4", "eval_every=2", "save_model=false", "threads=1", "fast.channels_last=false"]
    _run([python(), "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "repro.train", *common,
          f"results_dir={tmp_path / 'ddp'}"])
    # One process, the same global batch of 8 in 2 chunks of 4 with their own BN statistics, as the 2 ranks.
    _run([python(), "-m", "repro.train", *common, "optim.splits=2", f"results_dir={tmp_path / 'one'}"])
    runs = list((tmp_path / "ddp" / "fig4_imagenette").iterdir())
    assert [r.name for r in runs] == ["imagenette-resnet-18-s0"]  # rank 0 alone wrote, once
    ddp = pd.read_csv(runs[0] / "metrics.csv")
    one = pd.read_csv(next((tmp_path / "one" / "fig4_imagenette").iterdir()) / "metrics.csv")
    assert list(ddp.step) == [2, 4]
    for col in ("train_loss", "train_err", "lr", "epoch"):
        np.testing.assert_allclose(ddp[col], one[col], rtol=1e-4, atol=1e-6)
    assert "x 2 processes" in open(runs[0] / "meta.json").read()


def imagenette_archive(tmp_path, name="imagenette2-160"):
    """A small archive in the release's exact layout: <name>/{train,val}/<wnid>/*.JPEG, as a .tgz; (path, md5)."""
    import hashlib
    import tarfile

    from PIL import Image

    src = tmp_path / "src"
    for split, n in (("train", 3), ("val", 2)):
        for wnid in ("n01440764", "n02102040"):
            (src / name / split / wnid).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (40 + i, 30), (i * 40, 80, 160)).save(src / name / split / wnid / f"{wnid}_{i}.JPEG")
    archive = tmp_path / f"{name}.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / name, arcname=name)
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def test_imagenette_is_downloaded_checked_and_extracted_into_the_loaders_layout(tmp_path, served, monkeypatch, capsys):
    from repro.data import imagenet
    from repro.fetch import main

    archive, md5 = imagenette_archive(tmp_path)
    monkeypatch.setitem(imagenet.IMAGENETTE, "160px", (f"{served}/{archive.name}", md5))  # the release, served here
    assert main(["imagenette", "--root", str(tmp_path / "data")]) == 0
    folder = tmp_path / "data" / "imagenette2-160"
    assert "data.root=" + str(folder) in capsys.readouterr().out
    train, classes = imagenet.folder_samples(folder, "train")
    assert classes == ["n01440764", "n02102040"] and len(train) == 6
    assert len(imagenet.folder_samples(folder, "val")[0]) == 4
    archive.unlink()  # already there: nothing is fetched again
    assert imagenet.download_imagenette(tmp_path / "data") == folder


def error_line(err: str) -> str:
    """The one error line on stderr (beside the downloader's progress percentages), no traceback."""
    (line,) = [x for x in err.strip().splitlines() if not x.endswith("%")]
    return line


def test_a_corrupt_or_unreachable_imagenette_is_one_line_saying_what_to_do(tmp_path, served, monkeypatch, capsys):
    from repro.data import imagenet
    from repro.fetch import main

    archive, md5 = imagenette_archive(tmp_path)
    monkeypatch.setitem(imagenet.IMAGENETTE, "160px", (f"{served}/{archive.name}", "0" * 32))  # not its md5
    assert main(["imagenette", "--root", str(tmp_path / "data")]) == 2
    line = error_line(capsys.readouterr().err)
    assert line.startswith("error: ") and "imagenette2-160.tgz is corrupt" in line and "delete it and rerun" in line
    gone = f"{served}/nowhere/imagenette2-160.tgz"  # the file cannot be fetched (404), as offline
    monkeypatch.setitem(imagenet.IMAGENETTE, "160px", (gone, md5))
    assert main(["imagenette", "--root", str(tmp_path / "offline")]) == 2
    line = error_line(capsys.readouterr().err)
    assert "could not download Imagenette" in line and f"put it in {tmp_path / 'offline'}/" in line


def test_smaller_crops_scale_the_whole_geometry(tmp_path):
    yy, xx = np.meshgrid(np.arange(300), np.arange(500), indexing="ij")  # a smooth image: regions tell apart
    img = torch.from_numpy(np.stack([128 + 100 * np.sin(xx / 23 + c) * np.cos(yy / 17) for c in range(3)])
                           .astype(np.uint8))
    d = draw(0, 3)
    assert train_view(img, d, crop=112).shape == (3, 112, 112)
    assert eval_view(img, 10, crop=112).shape == (10, 3, 112, 112)
    assert [scaled(s, 112) for s in (256, 480)] == [128, 240] and scaled(256, CROP) == 256  # [128, 240], resize 128
    # the 112 view is the 224 view's geometry at half the size: the same draw, the same region of the image
    big, small = train_view(img, d).float(), train_view(img, d, crop=112).float()
    half = torch.nn.functional.avg_pool2d(big[None], 2)[0]
    other = torch.nn.functional.avg_pool2d(train_view(img, draw(0, 4)).float()[None], 2)[0]
    assert (half - small).abs().mean() < 3 < 20 < (other - small).abs().mean()  # resampling differs a little
    root = write_folder(tmp_path / "f")
    data = load_imagefolder(name="x", root=root, crop=112, workers=0)
    assert data.crop == 112 and "112 px crops" in data.source
    with pytest.raises(DataError, match=r"data.crop=500.*from 32 to 224"):
        load_imagefolder(name="x", root=root, crop=500)


def _loader_shapes_in_a_loky_worker(root: str) -> tuple:
    data = load_imagefolder(name="x", root=root, crop=64, workers=1)
    x, alpha, y = next(iter(train_loader(data, 4, 0, 0, 1, workers=1)))
    return tuple(x.shape)


def test_loader_workers_start_inside_the_parallel_launchers_processes(tmp_path):
    """hydra/launcher=parallel runs each run in a joblib (loky) worker, whose own multiprocessing context cannot
    start the loader's worker processes ('Process' object has no attribute 'env'): the loader uses the platform's."""
    joblib = pytest.importorskip("joblib")
    root = write_folder(tmp_path / "f")
    shapes = joblib.Parallel(n_jobs=2, backend="loky")(joblib.delayed(_loader_shapes_in_a_loky_worker)(str(root))
                                                       for _ in range(2))
    assert shapes == [(4, 3, 64, 64)] * 2


def test_imagenette_runs_are_labelled_with_the_files_they_read():
    from repro.protocol import identity, label

    cfg = {"model": {"family": "imagenet", "width": None}, "data": {"name": "imagenette", "crop": 112},
           "optim": {"batch_size": 64, "total_steps": 600}}
    meta = lambda root: {"data_source": f"imagenette from {root} (decoded by torchcodec on cpu)"}  # noqa: E731
    sample, full = identity(cfg, meta("../shared/data/imagenette-4k")), identity(cfg, meta("data/imagenette2-160"))
    assert sample != full  # a sample and the release are never pooled
    assert label(sample).startswith("Imagenette, imagenette-4k") and "112 px" in label(sample)
    assert "data.crop" not in identity({"model": {"family": "cifar10"}, "data": {"name": "cifar10"}}, {})
    old = identity({**cfg, "data": {"name": "imagenette"}}, meta("x/imagenette-4k"))  # before data.crop existed
    assert old["data.crop"] == 224 and "px" not in label(old)


def test_the_cpu_sized_fig4_composes_and_trains_a_slice(tmp_path):
    from conftest import compose

    from repro.train.loop import run

    cfg = compose(["exp=fig4_short", f"data.root={write_folder(tmp_path / 'f', classes=3, per_class=6)}",
                   f"results_dir={tmp_path / 'r'}", "model.width=4", "optim.total_steps=4", "eval_every=2",
                   "optim.batch_size=4", "data.workers=0", "data.crop=64", "final_crops=null"])
    assert (cfg.data.crop, cfg.optim.batch_size, cfg.fast.bf16, cfg.model.family) == (64, 4, False, "imagenet")
    full = compose(["exp=fig4_short"])
    assert (full.data.crop, full.optim.batch_size, full.optim.total_steps, full.final_crops, full.threads) == \
        (112, 64, 600, 10, 1)
    assert run(cfg) == "done"
    metrics = pd.read_csv(next((tmp_path / "r").rglob("metrics.csv")))
    assert list(metrics.step) == [2, 4] and metrics.train_err.between(0, 1).all()
