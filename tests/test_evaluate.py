"""Fig. 7 explained and every finished model re-evaluable: responses.csv's explanation columns on a hand-built
net whose every number is known, and `python -m repro.evaluate RUN_DIR` reproducing a finished run's logged
final test error exactly and its responses.csv."""
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT, SMALL, compose, python

from repro.models import build_model
from repro.train.analysis import COLUMNS, response_stats
from repro.train.loop import run


def pop_std(v: torch.Tensor) -> float:
    return v.double().std(unbiased=False).item()


def test_gamma_beta_and_the_branch_over_shortcut_ratio_on_a_net_with_known_numbers():
    """All convs zero and BN in eval mode (running mean 0, var 1): every BN outputs its beta, per channel and
    everywhere. So a layer's response std is the std of its beta, the stem's output is relu(beta_0), the first
    block's branch is beta_2 over the shortcut relu(beta_0), and the first downsampling block (option A) adds
    beta_4 to relu(beta_2 + relu(beta_0)) padded with 16 zero channels."""
    torch.manual_seed(0)
    model = build_model("cifar10", 8, "A")  # stem + 3 blocks of two 3x3 layers: 7 responses
    bns = model.response_layers()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.zero_()
        for i, bn in enumerate(bns):
            bn.weight.copy_(torch.linspace(-1, 2, bn.num_features) * (i + 1))
            bn.bias.copy_(torch.randn(bn.num_features))
    rows = response_stats(model, torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8), torch.zeros(3, 32, 32),
                          batch_size=4)
    assert [r["layer"] for r in rows] == list(range(1, 8)) and set(rows[0]) == set(COLUMNS)
    eps = 1e-5  # BN's: beta + gamma * (0 - 0) / sqrt(1 + eps) is beta exactly
    for r, bn in zip(rows, bns):
        assert r["std"] == pytest.approx(pop_std(bn.bias), rel=1e-6, abs=eps)
        assert r["gamma_abs_mean"] == pytest.approx(bn.weight.abs().mean().item())
        assert r["beta_std"] == pytest.approx(pop_std(bn.bias))
    b = [bn.bias.detach() for bn in bns]
    stem = b[0].relu()
    assert rows[2]["branch_over_shortcut"] == pytest.approx(pop_std(b[2]) / pop_std(stem), rel=1e-6)
    padded = torch.cat([(b[2] + stem).relu(), torch.zeros(16)])
    assert rows[4]["branch_over_shortcut"] == pytest.approx(pop_std(b[4]) / pop_std(padded), rel=1e-6)
    assert [r["layer"] for r in rows if r["branch_over_shortcut"] is not None] == [3, 5, 7]  # each block's last
    from repro.evaluate import summary

    said = summary(rows, model)  # one block per stage: each stage's median is its block's ratio
    assert said["branch_over_shortcut_by_stage"] == [rows[2]["branch_over_shortcut"], rows[4]["branch_over_shortcut"],
                                                    rows[6]["branch_over_shortcut"]]
    assert said["gamma_abs_mean_range"] == [min(r["gamma_abs_mean"] for r in rows), max(r["gamma_abs_mean"] for r in rows)]
    plain = build_model("cifar10", 8, "none")
    assert all(r["branch_over_shortcut"] is None for r in response_stats(plain, torch.zeros(2, 3, 32, 32, dtype=torch.uint8),
                                                                         torch.zeros(3, 32, 32)))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, generated_cifar):
    results = tmp_path_factory.mktemp("eval")
    cfg = compose(["exp=smoke", *SMALL, "exp_name=e", f"results_dir={results}", f"data.root={generated_cifar}", "threads=1"])
    assert run(cfg) == "done"
    return results / "e" / "cifar10-resnet-20-s0"


def test_a_finished_run_is_re_evaluated_to_its_logged_test_error_exactly(finished):
    from repro.evaluate import reevaluate

    r = reevaluate(finished, "cpu")
    logged = pd.read_csv(finished / "metrics.csv").iloc[-1]
    assert r["same_device"] and r["test_err"] == logged.test_err and r["test_loss"] == pytest.approx(logged.test_loss)
    assert r["responses_agree"] and r["agrees"]
    written = pd.read_csv(finished / "responses.csv")
    assert list(written.columns) == COLUMNS and written.branch_over_shortcut.notna().sum() == 9  # ResNet-20: 9 blocks


def test_re_evaluation_says_when_the_model_is_not_the_one_that_was_logged(finished, tmp_path):
    import shutil

    copy = tmp_path / finished.name
    shutil.copytree(finished, copy)
    state = torch.load(copy / "model.pt", weights_only=True)
    state["stem.0.0.weight"] *= 3  # another model: other responses
    torch.save(state, copy / "model.pt")
    out = subprocess.run([python(), "-m", "repro.evaluate", str(copy), "--device", "cpu"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "responses.csv (layer, std): DIFFERS" in out.stdout, out.stderr[-1000:]
    (copy / "model.pt").unlink()
    out = subprocess.run([python(), "-m", "repro.evaluate", str(copy)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2 and "model.pt not found" in out.stderr and out.stderr.count("\n") == 1


def test_fig7_draws_the_measure_asked_for_and_its_caption_says_which(tmp_path):
    from repro.plots.figures import fig7

    rows = [{"depth": d, "shortcut": sc, "layer": i + 1, "std": 1.0 + i, "gamma_abs_mean": 0.7,
             "beta_std": 0.1, "branch_over_shortcut": (0.5 if i % 2 else np.nan) if sc == "A" else np.nan}
            for d, sc in ((20, "A"), (20, "none")) for i in range(19)]
    resp = pd.DataFrame(rows)
    std = fig7(resp, tmp_path, nets=[(20, "A"), (20, "none")])
    ratio = fig7(resp, tmp_path, nets=[(20, "A"), (20, "none")], measure="branch_over_shortcut")
    assert std.missing == [] and "outputs of each 3x3 layer after BN" in std.caption
    assert ratio.missing == ["plain-20"] and "branch's output over its shortcut's" in ratio.caption  # plain: none
