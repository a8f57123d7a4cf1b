"""`make bench` stays runnable and its arithmetic is right (its numbers are measurements, not tested)."""
import json
import subprocess

import pytest
import torch
from conftest import IMAGENETTE, ROOT, python, write_cifar_folder

from repro.bench.common import FIG6_IMAGES, parse_nets, project_fig6


def test_parse_nets():
    assert parse_nets("20A,56none,110C") == [(20, "A"), (56, "none"), (110, "C")]
    with pytest.raises(SystemExit, match="'56D'"):
        parse_nets("56D")


def test_fig6_projection_interpolates_seconds_per_image_by_depth():
    c = 1e-4  # seconds per image per layer: depths 32, 44 (between) and 110 (beyond 56) follow the line
    rates = {(d, sc): 1 / (c * d) for sc in ("none", "A") for d in (20, 56)}
    p = project_fig6(rates)
    hours = lambda d: FIG6_IMAGES * c * d / 3600  # noqa: E731
    assert p["per_net_hours"]["plain-32"] == pytest.approx(hours(32))
    assert p["per_net_hours"]["ResNet-110"] == pytest.approx(hours(110))
    assert p["sequential_hours"] == pytest.approx(sum(hours(d) for d in (20, 32, 44, 56, 20, 32, 44, 56, 110)))
    assert project_fig6({k: v for k, v in rates.items() if k[1] == "none"}) is None  # one family: nothing to project


def test_bench_runs_end_to_end_and_writes_its_json(tmp_path):
    data = write_cifar_folder(tmp_path / "c", n_train=512, n_test=16)
    out = tmp_path / "bench.json"
    p = subprocess.run([python(), "-m", "repro.bench", "--cifar10", str(data), "--nets", "8A,8none", "--imagenet-nets",
                        "", "--windows", "1", "--steps", "1", "--no-ablation", "--no-concurrent", "--no-loader", "--out", str(out)],
                       cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    report = json.loads(out.read_text())
    assert [r["net"] for r in report["cifar10"]] == ["ResNet-8", "plain-8"]
    for row in report["cifar10"]:
        ours, ref = row["ours"], row["reference"]
        assert len(ours["windows_s_per_step"]) == len(ref["windows_s_per_step"]) == 1  # --windows 1: as asked
        assert all(s > 0 for s in ours["windows_s_per_step"] + ref["windows_s_per_step"])
    assert report["fast"]["channels_last"]
    assert report["fig6_sweep_projection"] is None  # one depth per family: nothing to interpolate from


def test_gpu_bench_projections_follow_from_the_measured_rates():
    from repro.bench.gpu import BATCH, EVALS, FIG6_NETS, STEPS_64K, project

    c = 1e-5  # seconds per image per layer
    graphed = {(d, s): 1 / (c * d) for s in ("none", "A") for d in (20, 56)}
    eager = {k: v / 4 for k, v in graphed.items()}
    evals = {k: 0.5 for k in graphed}
    per_run = lambda d, f=1: (f * c * d * STEPS_64K * BATCH + 0.5 * EVALS) / 60  # noqa: E731  minutes
    nets = [(20, "A"), (56, "A")]
    packed = {"nets": nets, "images_per_s": 2 * sum(graphed[n] for n in nets)}  # twice the runs' mean rate
    p = project(eager, graphed, packed, evals)
    assert p["fig6_sweep_minutes"]["graphed"] == pytest.approx(sum(per_run(d) for d, _ in FIG6_NETS))
    assert p["fig6_sweep_minutes"]["eager"] > 3 * p["fig6_sweep_minutes"]["graphed"]
    gain = packed["images_per_s"] * (1 / graphed[nets[0]] + 1 / graphed[nets[1]]) / 2
    assert p["pack_gain"] == pytest.approx(gain)
    assert p["fig6_sweep_minutes"]["packed"] == pytest.approx(p["fig6_sweep_minutes"]["graphed"] / gain)
    assert p["resnet_1202_alone_minutes"] == pytest.approx(c * 1202 * STEPS_64K * BATCH / 60)
    assert p["cifar_section_minutes"]["packed"] >= p["resnet_1202_alone_minutes"]  # the critical path bounds it
    assert p["section_runs"] == 9 + 5 * 4 + 1


def test_gpu_bench_runs_on_the_cpu_eager_and_packed_and_writes_its_json(tmp_path):
    from repro.bench.gpu import main

    data = write_cifar_folder(tmp_path / "c", n_train=512, n_test=16)
    out = tmp_path / "bench_gpu.json"
    assert main(["--device", "cpu", "--nets", "8A,14A,8none,14none", "--windows", "1", "--steps", "1", "--warm", "1",
                 "--cifar10", str(data),
                 "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert [n["net"] for n in r["nets"]] == ["ResNet-8", "ResNet-14", "plain-8", "plain-14"] and "errors" not in r
    assert all(n["eager_images_per_s"] > 0 and "graphed_images_per_s" not in n for n in r["nets"])  # no CUDA here
    assert r["packed"]["runs"] == 4 and r["packed"]["steps"] == ["eager"] and r["packed"]["images_per_s"] > 0
    assert r["fig6_sweep_minutes"]["graphed"] is None and r["fig6_sweep_minutes"]["packed"] > 0


def test_the_loader_bench_times_each_pipeline_on_each_image_set(tmp_path):
    from PIL import Image, JpegImagePlugin

    from repro.bench.loader import loader_rows, write_imagenet_sized

    files = write_imagenet_sized(tmp_path / "g", 3)
    with Image.open(files[0][0]) as im:  # ImageNet's size and JPEG settings, not Imagenette's 224x224
        assert im.size == (500, 375) and JpegImagePlugin.get_sampling(im) == 0  # 4:4:4
    root = IMAGENETTE if (IMAGENETTE / "train").exists() else None
    rows = loader_rows(root, torch.device("cpu"), generated=8, repeats=1, batches=1, batch=4)
    sets = {r["images"] for r in rows}
    assert len(sets) == (2 if root else 1)
    for s in sets:
        mine = {r["pipeline"]: r for r in rows if r["images"] == s}
        assert {"reference", "torchvision", "pil"} <= set(mine)
        assert all(r["images_per_s_per_worker"] > 0 and r["images_per_s"] > 0 for r in mine.values())
        assert mine["reference"]["vs_reference_per_worker"] == 1.0
