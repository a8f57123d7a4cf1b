"""Figures, tables, verdicts and the report, from fixture results in the real layout and a real run."""
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from repro import plots
from repro.report import verdicts, write_report
from repro.results import COLUMNS, ResultsError, curve_gaps, read_results
from conftest import compose, tiny_run_overrides


def make_run(root, exp, depth, shortcut, seed=0, train_final=0.1, test_final=0.12, steps=(100, 200, 300),
             status="done", family="cifar10", responses=None, final=None):
    """A run folder exactly as repro.train writes it, with curves that fall to the given final errors."""
    kind = "plain" if shortcut == "none" else ("resnet" if shortcut == "A" else f"resnet{shortcut}")
    run = root / exp / f"{family}-{kind}-{depth}-s{seed}"
    run.mkdir(parents=True)
    n = len(steps)
    rows = [{"step": s, "epoch": s / 390, "lr": 0.1, "train_loss": 1.0,
             "train_err": train_final + 0.3 * (n - 1 - i) / n, "test_loss": 1.0,
             "test_err": test_final + 0.3 * (n - 1 - i) / n, "wall_time": float(i)} for i, s in enumerate(steps)]
    pd.DataFrame(rows, columns=COLUMNS).to_csv(run / "metrics.csv", index=False)
    cfg = {"seed": seed, "model": {"family": family, "depth": depth, "shortcut": shortcut, "width": None},
           "data": {"name": family}, "optim": {"total_steps": 300, "batch_size": 128}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "meta.json").write_text(json.dumps({"status": status, "device": "cpu", "params": 1000 + depth,
                                               "scale": "scaled down: test fixture"}))
    if responses is not None:
        pd.DataFrame({"layer": np.arange(1, len(responses) + 1), "std": responses}).to_csv(run / "responses.csv", index=False)
    if final is not None:
        (run / "final.json").write_text(json.dumps(final))
    return run


@pytest.fixture
def degraded(tmp_path):
    """Fixture results showing the paper's pattern: plain-56 worse than plain-20, ResNets better."""
    r = tmp_path / "results"
    for depth, tr in ((20, 0.06), (32, 0.07), (44, 0.08), (56, 0.10)):
        make_run(r, "fig6_plain", depth, "none", train_final=tr, test_final=tr + 0.04,
                 responses=np.linspace(1.0, 2.0, depth - 1))
    for depth, tr in ((20, 0.05), (32, 0.04), (44, 0.03), (56, 0.02), (110, 0.01)):
        make_run(r, "fig6_resnet", depth, "A", train_final=tr, test_final=0.09 - depth / 2000,
                 responses=np.linspace(0.5, 0.8, depth - 1))
    for seed, te in enumerate((0.0640, 0.0660, 0.0680)):
        make_run(r, "table6", 110, "A", seed=seed, train_final=0.01, test_final=te)
    return r


def test_every_cifar_artefact_renders_from_fixture_results(degraded, tmp_path):
    out = tmp_path / "plots"
    for name in ("fig1", "fig6", "fig7", "table6"):
        art = plots.render(name, degraded, out)
        assert all(f.exists() and f.stat().st_size > 1000 for f in art.files if f.suffix in (".png", ".pdf"))
    assert {p.name for p in out.iterdir()} >= {"fig1.png", "fig1.pdf", "fig6.png", "fig6.pdf", "fig7.png",
                                                "fig7.pdf", "table6.md", "table6.csv"}


def test_missing_runs_are_reported_not_skipped(degraded, tmp_path):
    art = plots.render("fig6", degraded, tmp_path / "plots")
    assert art.missing == ["ResNet-1202"]
    assert "Missing runs (not drawn): ResNet-1202" in art.caption


def test_table6_values_are_the_hand_computed_means_and_stds(degraded, tmp_path):
    table = plots.render("table6", degraded, tmp_path / "plots").table.set_index("net")
    row = table.loc["ResNet-110"]  # from table6 (3 seeds): 6.40, 6.60, 6.80 -> mean 6.60, sample std 0.20
    assert row["ours: error (%)"] == "6.60 ± 0.20"
    assert row["ours: best (%)"] == "6.40"
    assert row["paper (%)"] == "6.43 (6.61 ± 0.16)"
    assert row["difference"] == "+0.17"
    assert table.loc["ResNet-20", "ours: error (%)"] == f"{100 * (0.09 - 20 / 2000):.2f}"
    assert table.loc["plain-56", "paper (%)"] == "not tabulated in the paper"
    assert "ResNet-1202" not in table.index and "ResNet-1202" in plots.render("table6", degraded, tmp_path / "p2").missing


def test_final_means_the_last_evaluation_not_the_best(tmp_path):
    run = make_run(tmp_path / "r", "table6", 20, "A", test_final=0.10)
    df = pd.read_csv(run / "metrics.csv")
    df.loc[1, "test_err"] = 0.01  # a lucky middle evaluation must not be picked
    df.to_csv(run / "metrics.csv", index=False)
    table = plots.render("table6", tmp_path / "r", tmp_path / "p").table.set_index("net")
    assert table.loc["ResNet-20", "ours: error (%)"] == "10.00"


def test_verdicts_hold_on_degradation_and_fail_without_it(degraded, tmp_path):
    vs = verdicts(plots.select(degraded, "fig6", None))
    assert [v.holds for v in vs] == [True, True, True]
    assert "plain-56 10.00% vs plain-20 6.00%" in vs[0].evidence
    flat = tmp_path / "flat"
    for depth, tr in ((20, 0.10), (56, 0.05)):
        make_run(flat, "fig6_plain", depth, "none", train_final=tr)
    for depth, tr in ((20, 0.04), (56, 0.08)):
        make_run(flat, "fig6_resnet", depth, "A", train_final=tr)
    vs = verdicts(plots.select(flat, "fig6", None))
    assert [v.holds for v in vs] == [False, False, False]


def test_verdicts_undecided_without_enough_runs(tmp_path):
    make_run(tmp_path / "r", "fig6_plain", 20, "none")
    vs = verdicts(read_results(tmp_path / "r"))
    assert [v.holds for v in vs] == [None, None, None]


def test_runs_in_progress_are_drawn_and_marked(degraded, tmp_path):
    make_run(degraded, "fig6_1202", 1202, "A", status="running", steps=(100,))
    df = plots.select(degraded, "fig6", None)
    assert plots.label(df, (1202, "A")) == "ResNet-1202 (in progress)"
    assert plots.render("fig6", degraded, tmp_path / "p").missing == []


def test_imagenet_artefacts_render_from_fixtures(tmp_path):
    r = tmp_path / "results"
    for depth, sc, te, final in ((18, "none", 0.30, 0.2794), (34, "none", 0.31, None), (18, "A", 0.30, 0.2788),
                                 (34, "A", 0.27, 0.2503)):
        make_run(r, "fig4", depth, sc, family="imagenet", train_final=te - 0.02, test_final=te,
                 final=None if final is None else {"top1_err": final, "top5_err": 0.09, "crops": 10})
    make_run(r, "table3", 34, "B", family="imagenet", test_final=0.25,
             final={"top1_err": 0.2452, "top5_err": 0.0746, "crops": 10})
    out = tmp_path / "p"
    assert plots.render("fig4", r, out).missing == []
    t2 = plots.render("table2", r, out).table.set_index("layers")
    assert t2.loc[18, "plain: ours"] == "27.94 (10-crop)" and t2.loc[34, "plain: ours"] == "31.00 (centre crop)"
    t3 = plots.render("table3", r, out)
    row = t3.table.set_index("net").loc["ResNet-34 B"]
    assert (row["ours: top-1"], row["ours: top-5"], row["paper: top-1"]) == ("24.52", "7.46", "24.52")
    assert "ResNet-152 B" in t3.missing


def test_malformed_csv_gives_a_clear_error_naming_the_file(degraded, tmp_path, capsys):
    bad = degraded / "fig6_plain" / "cifar10-plain-20-s0" / "metrics.csv"
    bad.write_text("step,loss\n1,2\n")
    with pytest.raises(ResultsError, match=r"cifar10-plain-20-s0/metrics.csv does not have the metrics columns"):
        plots.render("fig6", degraded, tmp_path / "p")
    assert plots.main(["fig6", "--root", str(degraded), "--out", str(tmp_path / "p")]) == 2
    assert "metrics.csv" in capsys.readouterr().err


def test_report_has_every_artefact_paper_values_scale_and_verdicts(degraded, tmp_path):
    out = tmp_path / "plots"
    write_report(degraded, out, None)
    md = (out / "report.md").read_text()
    for text in ("Fig. 1", "Fig. 6", "Fig. 7", "Table 6", "Fig. 4", "Table 2", "Table 3", "Scale of the runs",
                 "scaled down: test fixture", "HOLDS", "6.43 (6.61 ± 0.16)", "Missing runs"):
        assert text in md, text
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 4  # figures embedded: one file to send


def test_figures_render_from_a_real_tiny_run(tmp_path, cifar_root):
    from repro.train import run

    for sc in ("none", "A"):
        run(compose(tiny_run_overrides(tmp_path / "results", cifar_root, f"model.shortcut={sc}", "exp_name=fig6_plain")))
    out = tmp_path / "plots"
    art = plots.render("fig6", tmp_path / "results", out)
    assert "plain-20" not in art.missing and "ResNet-20" not in art.missing
    assert plots.render("fig7", tmp_path / "results", out).missing == ["plain-56", "ResNet-56", "ResNet-110"]
    write_report(tmp_path / "results", out, [tmp_path / "results" / "fig6_plain"], demo=True)
    assert "scaled down" in (out / "report.md").read_text()


def test_gaps_between_two_runs(tmp_path, capsys):
    rows = lambda errs: pd.DataFrame([{c: 0.0 for c in COLUMNS} | {"step": 10 * (i + 1), "train_err": e}  # noqa: E731
                                      for i, e in enumerate(errs)])
    gaps = curve_gaps(rows([0.5, 0.4, 0.3]), rows([0.5, 0.2, 0.35]))
    assert gaps["train_err"] == pytest.approx((0.25 / 3, 0.2)) and gaps["test_err"] == (0.0, 0.0)
    with pytest.raises(ResultsError, match="different steps"):
        curve_gaps(rows([0.5, 0.4]), rows([0.5, 0.4, 0.3]))
    for name, errs in (("a", [0.5, 0.4, 0.3]), ("b", [0.5, 0.2, 0.35])):
        (tmp_path / name).mkdir()
        rows(errs).to_csv(tmp_path / name / "metrics.csv", index=False)
    assert plots.main(["gaps", "--results", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "train_err: mean |gap| 0.0833, max 0.2000 over 3 evaluations" in capsys.readouterr().out
    assert plots.main(["gaps", "--results", str(tmp_path / "a")]) == 2
