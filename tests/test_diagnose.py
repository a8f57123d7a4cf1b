"""Issue 32: the per-layer diagnostics (controls that must and must not vanish, hand-computed norms), diagnostics
during training leaving the run unchanged, the convergence-rate extraction and fits, Table 1, the verdicts."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import compose, tiny_run_overrides
from torch import nn

from repro.diagnose import Subject, architectures, main, parse_nets, parse_seeds
from repro.errors import ConfigError
from repro.models import build_model
from repro.plots.tables import PAPER_TABLE1_GFLOPS, table1
from repro.plots.why import (
    EXPLODE,
    VANISH,
    convergence,
    convergence_steps,
    diagnostics_summary,
    fit,
    gradient_ratio,
    gradients,
    shown_steps,
    step_size,
    stream_ratios,
    why_verdicts,
)
from repro.results import METRICS
from repro.train.diagnostics import COLUMNS, Watch, measure


def batches(n=2, b=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(b, 3, 32, 32, generator=g), torch.randint(0, 10, (b,), generator=g)) for _ in range(n)]


def frame(model, depth, shortcut, seed=0, step=0, data=None):
    rows = measure(model, data or batches())
    head = {"net": f"{shortcut}-{depth}", "depth": depth, "shortcut": shortcut, "width": 16, "seed": seed,
            "step": step, "source": "init", "data": "noise"}
    return pd.DataFrame([{**head, **r} for r in rows])


def without_bn(model):
    for m in list(model.modules()):
        for name, child in m.named_children():
            if isinstance(child, nn.BatchNorm2d):
                setattr(m, name, nn.Identity())
    return model


def test_a_plain_net_built_to_vanish_is_reported_vanishing():
    torch.manual_seed(0)
    model = without_bn(build_model("cifar10", 56, "none", width=8))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(0.5)  # well below He's initialisation: each layer halves the signal and the gradient
    d = frame(model, 56, "none")
    ratio = stream_ratios(d).ratio.iloc[0]
    assert ratio < VANISH
    vanish = next(v for v in why_verdicts(d, pd.DataFrame()) if v.claim == "plain_gradients_vanish")
    assert vanish.verdict == "holds"


def test_an_identity_initialised_net_passes_gradients_unchanged():
    torch.manual_seed(0)
    model = without_bn(build_model("cifar10", 20, "none", width=8))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):  # every conv the identity, a widening one copying its input channels over
                m.weight.zero_()
                k = m.kernel_size[0] // 2
                for o in range(m.out_channels):
                    m.weight[o, o % m.in_channels, k, k] = 1.0
    positive = [(x.abs() + 0.1, y) for x, y in batches()]  # ReLUs pass a positive signal (and its gradient)
    d = frame(model, 20, "none", data=positive)
    inside = d[d.block_gain.notna() & ~d.name.str.endswith("_1.2")]  # not the strided first block of a stage
    assert len(inside) == 6  # (a strided block passes the gradient of a quarter of the positions)
    assert inside.block_gain.between(0.9, 1.1).all(), inside.block_gain.tolist()


def test_norms_match_a_hand_computation():
    torch.manual_seed(0)
    model = build_model("cifar10", 8, "A", width=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    (x, y), = batches(1)
    rows = {r["name"]: r for r in measure(model, [(x, y)], lr=0.1)}
    # the model measured is not changed (a copy is): its BN running statistics, its grads
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    # the fc row by hand: dL/dlogits = (softmax - onehot) / B for the batch-mean cross-entropy
    net = build_model("cifar10", 8, "A", width=4)
    net.load_state_dict(model.state_dict())
    net.train()
    feats = torch.flatten(F.adaptive_avg_pool2d(net.stages(net.stem(x)), 1), 1)
    logits = net.fc(feats)
    g = (logits.softmax(1) - F.one_hot(y, 10)) / len(y)
    assert rows["fc"]["act_grad_norm"] == pytest.approx(g.norm().item(), rel=1e-5)
    grad_w = g.T @ feats
    assert rows["fc"]["weight_rel_grad"] == pytest.approx((grad_w.norm() / net.fc.weight.norm()).item(), rel=1e-4)
    assert rows["fc"]["eff_step"] == pytest.approx(0.1 * rows["fc"]["weight_rel_grad"])
    # the last block's gain by autograd on the same forward: ||dL/dx_in|| / ||dL/dx_out||
    stem = net.stem(x)
    h = net.stages[0](stem)
    h = net.stages[1](h)
    x_in = h.detach().requires_grad_()
    x_out = net.stages[2](x_in)
    loss = F.cross_entropy(net.fc(torch.flatten(F.adaptive_avg_pool2d(x_out, 1), 1)), y)
    g_in, g_out = torch.autograd.grad(loss, [x_in, x_out])
    assert rows["conv4_1.2"]["block_gain"] == pytest.approx((g_in.norm() / g_out.norm()).item(), rel=1e-4)
    assert rows["conv4_1.2"]["stream_std"] == pytest.approx(x_out.std().item(), rel=1e-5)


def test_rows_cover_every_weighted_layer_once():
    torch.manual_seed(0)
    d = frame(build_model("cifar10", 20, "A", width=4), 20, "A")
    assert list(d.layer) == list(range(1, 21)) and d.name.iloc[0] == "conv1" and d.name.iloc[-1] == "fc"
    assert d.block_gain.notna().sum() == 9 and d.branch_ratio.notna().sum() == 9
    assert set(COLUMNS) <= set(d.columns) | {"source"}


def test_net_names_and_seeds_parse_and_bad_ones_say_how():
    assert parse_nets("plain-20, ResNet-56,resnetB-32") == [(20, "none"), (56, "A"), (32, "B")]
    assert parse_seeds("0-2,7") == [0, 1, 2, 7]
    with pytest.raises(ConfigError, match="plain-<depth>"):
        parse_nets("vgg-16")
    with pytest.raises(ConfigError, match="0-4"):
        parse_seeds("a-b")
    assert Subject(20, "none", 8, 0).net == "plain-20"


def test_the_command_writes_diagnostics_at_init(tmp_path, tiny_cifar, capsys):
    out = tmp_path / "d.csv"
    assert main(["--nets", "plain-8,resnet-8", "--seeds", "0-1", "--width", "4", "--root", str(tiny_cifar),
                 "--batch-size", "16", "--out", str(out)]) == 0
    d = pd.read_csv(out)
    assert list(d.columns) == COLUMNS and len(d) == 4 * 8 and set(d.source) == {"init"}
    capsys.readouterr()
    assert main(["--nets", "plain-9", "--root", str(tiny_cifar)]) == 2  # one line, exit 2
    err = capsys.readouterr().err
    assert "plain-9" in err and "6n+2" in err and len(err.strip().splitlines()) == 1


def test_metrics_are_unchanged_by_diagnostics_during_training(tmp_path, tiny_cifar):
    from repro.train.loop import run

    for name, every in (("off", 0), ("on", 1)):
        assert run(compose(tiny_run_overrides(tmp_path / name, tiny_cifar, f"diagnostics.every={every}",
                                              "diagnostics.batches=1"))) == "done"
    off, on = (next((tmp_path / n).rglob(METRICS)) for n in ("off", "on"))
    strip = lambda p: [line.rsplit(",", 1)[0] for line in p.read_text().splitlines()]  # noqa: E731 (wall_time)
    assert strip(off) == strip(on)
    assert not (off.parent / "diagnostics.csv").exists()
    d = pd.read_csv(on.parent / "diagnostics.csv")
    evals = pd.read_csv(on).step.tolist()
    assert sorted(d.step.unique()) == [0, *evals] and set(d.source) == {"training"}


def test_the_figures_show_init_and_four_training_points_spread_evenly():
    assert shown_steps([0, 500, 1000]) == [0, 500, 1000]
    assert shown_steps(range(0, 4001, 500)) == [0, 500, 1500, 3000, 4000]  # the last always drawn
    assert shown_steps([250, 500]) == [250, 500]  # no initialisation measured: none drawn


def test_the_watch_is_due_at_every_nth_evaluation():
    w = Watch(None, every=2, eval_every=10, total=45, batches=[], head={}, rows=[])
    assert [s for s in range(0, 46) if w.due(s)] == [0, 20, 40, 45]


def curves(depth_steps: dict[tuple[int, str], int], grid: int = 10) -> pd.DataFrame:
    """Synthetic runs whose training error crosses 60% exactly at the given step (80% at half of it)."""
    rows = []
    for (depth, sc), cross in depth_steps.items():
        for step in range(grid, 4 * cross + grid, grid):
            err = 0.85 if step < cross // 2 else (0.7 if step < cross else 0.5)
            rows.append({"path": f"r{depth}{sc}", "depth": depth, "shortcut": sc, "seed": 0, "protocol": "p",
                         "step": step, "lr": 0.1, "train_err": err})
    return pd.DataFrame(rows)


def test_convergence_steps_are_the_first_crossings_and_the_fit_recovers_the_rate(tmp_path):
    rate = math.log(2) / 12  # steps double every 12 layers
    known = {(d, "none"): int(round(100 * math.exp(rate * d) / 20)) * 20 for d in (20, 32, 44, 56)}
    df = curves(known)
    s = convergence_steps(df).set_index("depth")
    for (d, _), cross in known.items():
        assert s.loc[d, "steps_to_60"] == cross and s.loc[d, "steps_to_80"] == cross // 2
        assert np.isnan(s.loc[d, "steps_to_40"])
    e = fit(s.index, s.steps_to_60, "exponential")
    assert e.slope == pytest.approx(rate, rel=0.05) and 0.9 < e.held_back_ratio < 1.1
    p = fit(s.index, s.steps_to_60, "power")
    assert p.rss > e.rss
    verdict = why_verdicts(pd.DataFrame(), df)[-1]
    assert verdict.claim == "plain_convergence_slows_exponentially" and verdict.verdict == "holds"
    # a power law in depth is not called exponential
    power = curves({(d, "none"): int(round(d ** 2 / 20)) * 20 for d in (20, 32, 44, 56)})
    assert why_verdicts(pd.DataFrame(), power)[-1].verdict == "does not hold"
    art = convergence(df, tmp_path)
    assert (tmp_path / "convergence.png").exists() and "exponential" in art.caption


def test_the_convergence_verdict_reads_one_protocol_the_finest_of_equals():
    exponential = curves({(d, "none"): int(round(100 * math.exp(math.log(2) / 12 * d) / 20)) * 20
                          for d in (20, 32, 44, 56)})
    power = curves({(d, "none"): int(round(d ** 2 / 20)) * 20 for d in (20, 32, 44, 56)}, grid=20)
    both = pd.concat([exponential.assign(protocol="fine"), power.assign(protocol="coarse", path=power.path + "c")])
    verdict = why_verdicts(pd.DataFrame(), both)[-1]
    assert verdict.verdict == "holds" and "protocol fine" in verdict.evidence  # same depths and runs: the 10-step grid
    more = pd.concat([both, power.assign(protocol="coarse", seed=1, path=power.path + "s1")])
    assert "protocol coarse" in why_verdicts(pd.DataFrame(), more)[-1].evidence  # more runs win over a finer grid


def test_table1_counts_match_the_paper_and_torchvision(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    arch = pd.DataFrame(architectures())
    for depth, paper in PAPER_TABLE1_GFLOPS.items():
        ours = arch[(arch.family == "imagenet") & (arch.depth == depth) & (arch.shortcut != "none")].macs.iloc[0]
        assert ours / 1e9 == pytest.approx(paper, rel=0.03)
    for depth in (50, 101, 152):  # option B: torchvision's nets (its v1.5 stride moves FLOPs, not parameters)
        tv = getattr(torchvision.models, f"resnet{depth}")()
        assert arch[(arch.family == "imagenet") & (arch.depth == depth)].params.iloc[0] == \
            sum(p.numel() for p in tv.parameters())
    assert arch[(arch.family == "cifar10") & (arch.depth == 20)].params.iloc[0] == 269_722  # paper.md, option A
    art = table1(arch, tmp_path)
    assert (tmp_path / "table1.md").exists() and len(art.table) == len(arch)


def test_explosion_and_block_gain_verdicts_read_the_measurements():
    torch.manual_seed(0)
    plain = frame(build_model("cifar10", 32, "none", width=8), 32, "none")
    res = frame(build_model("cifar10", 32, "A", width=8), 32, "A")
    vs = {v.claim: v for v in why_verdicts(pd.concat([plain, res]), pd.DataFrame())}
    ratio = stream_ratios(plain).ratio.iloc[0]
    assert vs["plain_gradients_explode_at_init"].verdict == ("holds" if ratio > EXPLODE else "does not hold")
    below = (res.block_gain.dropna() < 1).mean()
    assert vs["block_gain_at_least_one"].value == pytest.approx(below)
    assert vs["block_gain_at_least_one"].verdict == ("holds" if below == 0 else "does not hold")
    assert vs["plain_convergence_slows_exponentially"].verdict == "not measured"


def test_trained_measurements_enter_the_figures_and_the_vanishing_verdict(tmp_path):
    """Rows at later steps (diagnostics.every during training) are drawn as such and read by the verdicts: a plain
    net that vanishes at step 500 (no BN, weights scaled down) is called vanishing though it did not at init."""
    torch.manual_seed(0)
    init = frame(build_model("cifar10", 32, "none", width=8), 32, "none")
    shrunk = without_bn(build_model("cifar10", 32, "none", width=8))
    with torch.no_grad():
        for m in shrunk.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(0.3)
    later = frame(shrunk, 32, "none", step=500)
    res = pd.concat([frame(build_model("cifar10", 32, "A", width=8), 32, "A", step=s) for s in (0, 500)])
    diag = pd.concat([init, later, res])
    vanish = {v.claim: v for v in why_verdicts(diag, pd.DataFrame())}["plain_gradients_vanish"]
    assert stream_ratios(init).ratio.iloc[0] > VANISH and vanish.verdict == "holds" and "step 500" in vanish.evidence
    art = gradient_ratio(diag, tmp_path)
    assert (tmp_path / "gradient_ratio.png").exists() and "none-32 at steps 0, 500" in art.caption
    many = pd.concat([init.assign(step=s) for s in range(0, 700, 100)])  # init and 6 training points: 4 drawn
    assert "Also measured, not drawn: steps 200, 500 " in gradients(many, tmp_path).caption
    assert "none-32 at steps 0, 500" in step_size(diag, tmp_path).caption and (tmp_path / "step_size.png").exists()
    summary = diagnostics_summary(diag, tmp_path).table.set_index(["net", "step"])
    assert summary.loc[("none-32", 500), "grad_ratio"] < VANISH < summary.loc[("none-32", 0), "grad_ratio"]
    below = (res[res.step == 0].block_gain.dropna() < 1).mean()
    assert summary.loc[("A-32", 0), "blocks_gain_below_1"] == pytest.approx(below)
    assert (summary.layers_below_frozen <= summary.conv_layers).all()
    assert (tmp_path / "diagnostics_summary.csv").exists()
