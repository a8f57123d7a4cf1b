"""Figures, tables, verdicts and the report, from fixture results in the real layout and a real run."""
import json

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import compose, tiny_run_overrides

from repro.errors import ResultsError
from repro.plots import figures, registry
from repro.plots.__main__ import main
from repro.plots.report import write_report
from repro.plots.verdicts import verdicts
from repro.protocol import OFFICIAL_MD5
from repro.results import COLUMNS, curve_gaps, final_rows, read_results

PAPER_CIFAR = {"data": {"name": "cifar10", "train_size": 0, "test_size": 0, "val_size": 0},
               "optim": {"total_steps": 64000, "batch_size": 128}}
PAPER_META = {"fast": {"bf16": False}, "data_md5": OFFICIAL_MD5}


def deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def make_run(root, exp, depth, shortcut, seed=0, train_final=0.1, test_final=0.12, steps=(100, 200, 300),
             status="done", family="cifar10", responses=None, final=None, cfg=None, meta=None, name=None):
    """A run folder exactly as repro.train writes it, with curves that fall to the given final errors.
    `cfg`/`meta` are merged into the config and metadata (protocol), `name` overrides the folder name."""
    kind = "plain" if shortcut == "none" else ("resnet" if shortcut == "A" else f"resnet{shortcut}")
    data = (cfg or {}).get("data", {}).get("name", family)
    run = root / exp / (name or f"{data}-{kind}-{depth}-s{seed}")
    run.mkdir(parents=True)
    n = len(steps)
    rows = [{"step": s, "epoch": s / 390, "lr": 0.1, "train_loss": 1.0,
             "train_err": train_final + 0.3 * (n - 1 - i) / n, "test_loss": 1.0,
             "test_err": test_final + 0.3 * (n - 1 - i) / n, "wall_time": float(i)} for i, s in enumerate(steps)]
    pd.DataFrame(rows, columns=COLUMNS).to_csv(run / "metrics.csv", index=False)
    base = {"seed": seed, "model": {"family": family, "depth": depth, "shortcut": shortcut, "width": None},
            "data": {"name": family}, "optim": {"total_steps": max(steps), "batch_size": 128}}
    (run / "config.yaml").write_text(yaml.safe_dump(deep_merge(base, cfg or {})))
    (run / "meta.json").write_text(json.dumps({"status": status, "device": "cpu", "params": 1000 + depth, **(meta or {})}))
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
        art = registry.render(name, degraded, out)
        assert all(f.exists() and f.stat().st_size > 1000 for f in art.files if f.suffix in (".png", ".pdf"))
    assert {p.name for p in out.iterdir()} >= {"fig1.png", "fig1.pdf", "fig6.png", "fig6.pdf", "fig7.png",
                                                "fig7.pdf", "table6.md", "table6.csv"}


def test_missing_runs_are_reported_not_skipped(degraded, tmp_path):
    art = registry.render("fig6", degraded, tmp_path / "plots")
    assert art.missing == ["ResNet-1202"]
    assert "Missing runs (not drawn): ResNet-1202" in art.caption


def test_table6_values_are_the_hand_computed_means_and_stds(degraded, tmp_path):
    art = registry.render("table6", degraded, tmp_path / "plots")
    csv = pd.read_csv(tmp_path / "plots" / "table6.csv").set_index("net")
    row = csv.loc["ResNet-110"]  # table6 (3 seeds): 6.40, 6.60, 6.80; fig6_resnet's seed 0 (6.45) is the same
    # protocol, net and seed as table6's seed 0: one computation, counted once (the finished one found first)
    assert row["runs"] == 3
    assert (row["mean"], row["std"], row["best"]) == pytest.approx((6.60, 0.20, 6.40))
    assert (row["paper"], row["paper_std"], row["paper_best"]) == (6.61, 0.16, 6.43)  # mean beside mean
    assert pd.isna(row["difference"])  # a fixture protocol is not the paper's: no difference is claimed
    assert csv.loc["ResNet-20", "mean"] == pytest.approx(100 * (0.09 - 20 / 2000))
    assert pd.isna(csv.loc["plain-56", "paper"])
    assert art.table.set_index("net").loc["plain-56", "paper (%)"] == "not tabulated"
    assert "ResNet-1202" not in csv.index and "ResNet-1202" in art.missing


def test_final_means_the_last_evaluation_not_the_best(tmp_path):
    run = make_run(tmp_path / "r", "table6", 20, "A", test_final=0.10)
    df = pd.read_csv(run / "metrics.csv")
    df.loc[1, "test_err"] = 0.01  # a lucky middle evaluation must not be picked
    df.to_csv(run / "metrics.csv", index=False)
    registry.render("table6", tmp_path / "r", tmp_path / "p")
    assert pd.read_csv(tmp_path / "p" / "table6.csv").set_index("net").loc["ResNet-20", "mean"] == pytest.approx(10.0)


def test_final_errors_name_the_device_beside_the_training_time(tmp_path):
    """A reference set may mix devices (ResNet-110 of fig6_short ran on a GPU): an hour means nothing without one."""
    from repro.plots.tables import final_errors

    make_run(tmp_path / "r", "x", 20, "A")
    make_run(tmp_path / "r", "x", 110, "A", meta={"device": "NVIDIA H200"})
    table = final_errors(read_results(tmp_path / "r"), tmp_path / "p").table.set_index("net")
    assert table.loc["ResNet-20", "device"] == "cpu" and table.loc["ResNet-110", "device"] == "NVIDIA H200"
    assert (tmp_path / "p" / "final_errors.md").read_text().splitlines()[0].endswith("| device |")


def _verdicts(df, floor=1.5):
    return {v.claim: v for v in verdicts(df, "cifar10", df.protocol.iloc[0], floor)}


def test_verdicts_hold_on_degradation_and_fail_against_it(degraded, tmp_path):
    df = registry.select(degraded, "fig6", None)
    vs = _verdicts(df, floor=0.5)  # margins: plain 56 vs 20 +4.0 points, SE 0.71 -> holds
    assert {k: v.verdict for k, v in vs.items()} == {
        "plain_deeper_worse": "holds", "residual_beats_plain": "holds", "residual_deeper_no_worse": "holds",
        "plain_penalty_exceeds_residual": "holds"}
    assert vs["plain_deeper_worse"].margin == pytest.approx(4.0)
    assert "margin +4.00 points against 2 SE = 1.41" in vs["plain_deeper_worse"].evidence
    assert vs["plain_penalty_exceeds_residual"].margin == pytest.approx(4.0 + 3.0)  # (10-6) - (2-5)
    flat = tmp_path / "flat"
    for depth, tr in ((20, 0.10), (56, 0.05)):
        make_run(flat, "fig6_plain", depth, "none", train_final=tr)
    for depth, tr in ((20, 0.04), (56, 0.08)):
        make_run(flat, "fig6_resnet", depth, "A", train_final=tr)
    vs = _verdicts(registry.select(flat, "fig6", None), floor=0.5)
    assert [v.verdict for v in vs.values()] == ["does not hold"] * 4


def test_a_margin_within_the_noise_is_inconclusive(tmp_path):
    for depth, tr in ((20, 0.100), (56, 0.110)):  # +1 point: under 2 SE of a 1.5-point floor (4.24)
        make_run(tmp_path, "fig6_plain", depth, "none", train_final=tr)
    v = _verdicts(read_results(tmp_path))["plain_deeper_worse"]
    assert v.verdict == "inconclusive" and v.margin == pytest.approx(1.0) and v.se == pytest.approx(1.5 * 2 ** 0.5)
    assert _verdicts(read_results(tmp_path), floor=0.2)["plain_deeper_worse"].verdict == "holds"


def test_verdicts_not_measured_without_enough_runs(tmp_path):
    make_run(tmp_path / "r", "fig6_plain", 20, "none")
    assert {v.verdict for v in _verdicts(read_results(tmp_path / "r")).values()} == {"not measured"}


def test_a_run_that_has_just_started_is_read_not_refused(degraded, tmp_path):
    run = make_run(degraded, "fig6_1202", 1202, "A", status="running", steps=(100,))
    (run / "metrics.csv").write_text(",".join(COLUMNS) + "\n")  # the header, no row yet
    df = read_results(degraded)
    assert run.name not in set(df.run) and len(df.path.unique()) == 12
    assert registry.render("fig6", degraded, tmp_path / "p").missing == ["ResNet-1202"]


def test_runs_in_progress_are_drawn_and_marked(degraded, tmp_path):
    make_run(degraded, "fig6_1202", 1202, "A", status="running", steps=(100,), cfg={"optim": {"total_steps": 300}})
    df = registry.select(degraded, "fig6", None)
    assert figures.label(df, (1202, "A")) == "ResNet-1202 (in progress)"
    art = registry.render("fig6", degraded, tmp_path / "p")
    assert art.missing == [] and "fig6_1202/cifar10-resnet-1202-s0 (running at step 100 of 300)" in art.caption
    assert "ResNet-1202" not in set(pd.read_csv(registry.render("table6", degraded, tmp_path / "p").files[1]).net)


def test_every_trap_of_a_real_results_tree(tmp_path):
    """Mixed data sets and protocols in one folder, an unfinished run, five seeds, ImageNet + Imagenette,
    same-named runs in two folders: tables, figures and verdicts keep them apart, with exact values."""
    r = tmp_path / "results"
    paper, short = dict(cfg=PAPER_CIFAR, meta=PAPER_META), dict(cfg=deep_merge(PAPER_CIFAR, {"optim": {"total_steps": 8000}}),
                                                              meta=PAPER_META, steps=(4000, 8000))
    # table6/: ResNet-20 at the paper protocol over five seeds, one on the synthetic task, one of 8000 iterations
    for seed, te in enumerate((0.0870, 0.0880, 0.0890, 0.0860, 0.0900)):
        make_run(r, "table6", 20, "A", seed=seed, test_final=te, train_final=0.01 + seed / 1000,
                 steps=(32000, 64000), **paper)
    make_run(r, "table6", 20, "A", seed=0, test_final=0.40, train_final=0.35, name="synthetic-resnet-20-s0",
             cfg=deep_merge(PAPER_CIFAR, {"data": {"name": "synthetic", "synthetic_seed": 0}}), meta=PAPER_META,
             steps=(32000, 64000))
    make_run(r, "table6", 20, "A", seed=0, test_final=0.2, train_final=0.15, name="cifar10-resnet-20-s0-8k", **short)
    # an unfinished ResNet-56 (32,000 of 64,000) and a finished one on a re-encoded copy (not the official files)
    make_run(r, "table6", 56, "A", seed=1, test_final=0.05, status="running", steps=(16000, 32000),
             cfg=deep_merge(PAPER_CIFAR, {"optim": {"total_steps": 64000}}), meta=PAPER_META)
    make_run(r, "table6", 56, "A", test_final=0.12, train_final=0.05, name="copy-resnet-56-s0", steps=(32000, 64000),
             cfg=PAPER_CIFAR, meta={"fast": {"bf16": False}, "data_md5": {**OFFICIAL_MD5, "test_batch": "0" * 32}})
    # same-named runs in two folders, different protocols: plain-20 at the paper protocol and at 8000 iterations
    make_run(r, "fig6_plain", 20, "none", train_final=0.06, test_final=0.10, steps=(32000, 64000), **paper)
    make_run(r / "elsewhere", "fig6_plain", 20, "none", train_final=0.30, test_final=0.33, **short)
    make_run(r, "fig6_plain", 56, "none", train_final=0.12, test_final=0.15, steps=(32000, 64000), **paper)
    make_run(r, "fig6_resnet", 56, "A", train_final=0.005, test_final=0.07, steps=(32000, 64000), **paper)

    df = read_results([r / "table6", r / "fig6_plain", r / "elsewhere", r / "fig6_resnet"])
    assert df.path.nunique() == 13 and len(final_rows(df)) == 12  # every folder a run; the unfinished one not final
    assert sorted(set(df.protocol)) == ["8000 it", "copy 6722b453", "paper", "synthetic"]
    registry.render("table6", r, tmp_path / "p", [r / "table6", r / "fig6_plain", r / "elsewhere", r / "fig6_resnet"])
    t6 = pd.read_csv(tmp_path / "p" / "table6.csv")
    rows = {(n, p): row for n, p, row in zip(t6.net, t6.protocol, t6.itertuples())}
    paper20 = rows[("ResNet-20", "paper")]
    assert paper20.runs == 5 and (paper20.mean, paper20.best) == pytest.approx((8.80, 8.60))
    assert paper20.std == pytest.approx(np.std([8.7, 8.8, 8.9, 8.6, 9.0], ddof=1))
    assert paper20.paper == 8.75 and paper20.difference == pytest.approx(0.05)
    assert rows[("ResNet-20", "synthetic")].mean == pytest.approx(40.0)
    assert rows[("ResNet-20", "8000 it")].mean == pytest.approx(20.0) and pd.isna(rows[("ResNet-20", "8000 it")].difference)
    assert rows[("ResNet-56", "copy 6722b453")].mean == pytest.approx(12.0)  # never pooled with the official files
    assert rows[("ResNet-56", "paper")].runs == 1 and rows[("ResNet-56", "paper")].mean == pytest.approx(7.0)  # not 5.0
    assert rows[("plain-20", "paper")].mean == pytest.approx(10.0) and rows[("plain-20", "8000 it")].mean == pytest.approx(33.0)

    # Figures draw one protocol (the paper's here: fewest deviations) and say what they left out.
    fig = registry.render("fig6", r, tmp_path / "p", [r / "table6", r / "fig6_plain", r / "elsewhere", r / "fig6_resnet"])
    assert fig.caption.count("Protocol: paper.") == 1 and "Left out (other protocols, never pooled)" in fig.caption
    assert "8000 it (2 runs)" in fig.caption and "synthetic (1 run)" in fig.caption
    assert "table6/cifar10-resnet-56-s1 (running at step 32000 of 64000)" in fig.caption

    # Verdicts per protocol, on finished runs only: paper protocol has plain-20/56 and ResNet-20 (5 seeds)/56.
    vs = {v.claim: v for v in verdicts(df[df.protocol == "paper"], "cifar10", "paper", 1.5)}
    assert vs["plain_deeper_worse"].verdict == "holds" and vs["plain_deeper_worse"].margin == pytest.approx(6.0)
    rb = vs["residual_beats_plain"]  # plain-56 12% vs ResNet-56 0.5% (not the unfinished one)
    assert rb.verdict == "holds" and rb.margin == pytest.approx(11.5)
    # ResNet-56 (1 seed, floor 1.5) vs ResNet-20 (5 seeds: 1.0..1.4%, std 0.158): margin 1.2 - 0.5 = +0.7
    rd = vs["residual_deeper_no_worse"]
    assert rd.margin == pytest.approx(0.7) and rd.verdict == "inconclusive"
    assert rd.se == pytest.approx((1.5 ** 2 + np.std([1.0, 1.1, 1.2, 1.3, 1.4], ddof=1) ** 2 / 5) ** 0.5)

    # ImageNet and Imagenette: Table 2's cells come from ImageNet runs only.
    for depth, sc, top1 in ((18, "none", 0.2794), (34, "none", 0.2854)):
        make_run(r, "fig4", depth, sc, family="imagenet", test_final=top1 + 0.02,
                 final={"top1_err": top1, "top5_err": 0.09, "crops": 10}, steps=(300000, 600000))
    make_run(r, "fig4_imagenette", 18, "none", family="imagenet", test_final=0.10, cfg={"data": {"name": "imagenette"}},
             final={"top1_err": 0.05, "top5_err": 0.01, "crops": 10})
    t2 = registry.render("table2", r, tmp_path / "p")
    assert list(t2.table.net) == ["plain-18", "plain-34"] and list(t2.table["ours: top-1"]) == ["27.94", "28.54"]
    t2n = pd.read_csv(registry.render("table2_imagenette", r, tmp_path / "p").files[1])
    assert list(t2n.net) == ["plain-18"] and t2n.top1.iloc[0] == pytest.approx(5.0) and pd.isna(t2n.paper_top1.iloc[0])


def test_imagenet_artefacts_render_from_fixtures(tmp_path):
    r = tmp_path / "results"
    for depth, sc, te, final in ((18, "none", 0.30, 0.2794), (34, "none", 0.31, None), (18, "A", 0.30, 0.2788),
                                 (34, "A", 0.27, 0.2503)):
        make_run(r, "fig4", depth, sc, family="imagenet", train_final=te - 0.02, test_final=te,
                 final=None if final is None else {"top1_err": final, "top5_err": 0.09, "crops": 10})
    make_run(r, "table3", 34, "B", family="imagenet", test_final=0.25,
             final={"top1_err": 0.2452, "top5_err": 0.0746, "crops": 10})
    out = tmp_path / "p"
    assert registry.render("fig4", r, out).missing == []
    t2 = registry.render("table2", r, out).table.set_index("net")
    assert (t2.loc["plain-18", "ours: top-1"], t2.loc["plain-18", "eval"]) == ("27.94", "10-crop")
    assert (t2.loc["plain-34", "ours: top-1"], t2.loc["plain-34", "eval"]) == ("31.00", "centre crop")
    t3 = registry.render("table3", r, out)
    row = t3.table.set_index("net").loc["ResNet-34 B"]
    assert (row["ours: top-1"], row["ours: top-5"], row["paper: top-1"]) == ("24.52", "7.46", "24.52")
    assert "ResNet-152 B" in t3.missing


def test_malformed_csv_gives_a_clear_error_naming_the_file(degraded, tmp_path, capsys):
    bad = degraded / "fig6_plain" / "cifar10-plain-20-s0" / "metrics.csv"
    bad.write_text("step,loss\n1,2\n")
    with pytest.raises(ResultsError, match=r"cifar10-plain-20-s0/metrics.csv does not have the metrics columns"):
        registry.render("fig6", degraded, tmp_path / "p")
    assert main(["fig6", "--root", str(degraded), "--out", str(tmp_path / "p")]) == 2
    assert "metrics.csv" in capsys.readouterr().err


def test_no_runs_or_an_unknown_protocol_is_one_line_and_writes_nothing(degraded, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "p"
    assert main(["table6", "--results", str(tmp_path / "empty"), "--out", str(out)]) == 2
    assert main(["report", "--results", str(tmp_path / "empty"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("error: no runs under") for e in err)
    assert main(["fig6", "--root", str(degraded), "--protocol", "nonsense", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--protocol 'nonsense' matches no runs; protocols here:" in err and "arithmetic unrecorded' (11 runs)" in err  # 13 folders, 11 computations
    assert not out.exists()


def test_report_has_every_artefact_paper_values_scale_and_verdicts(degraded, tmp_path):
    out = tmp_path / "plots"
    write_report(degraded, out, None)
    md = (out / "report.md").read_text()
    for text in ("Fig. 1", "Fig. 6", "Fig. 7", "Table 6", "Not drawn, for want of runs on their data or of their "
                 "files: fig4, table2, table3, fig4_imagenette, table2_imagenette, table1, gradients, gradient_ratio, "
                 "step_size, signal, diagnostics_summary",
                 "Convergence rate against depth", "Is it vanishing gradients?", "Scale of the runs",
                 "differs from the paper: ", "HOLDS", "6.61 ± 0.16", "Missing runs", "plain_penalty_exceeds_residual"):
        assert text in md, text
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4  # the CIFAR figures embedded (and convergence): one file
    v = pd.read_csv(out / "verdicts.csv")
    assert set(v.family) == {"cifar10", "imagenet"} and len(v) == 12
    assert set(v[v.family == "imagenet"].verdict) == {"not measured"}  # no ImageNet runs: never from CIFAR ones
    assert set(v[v.protocol != "diagnostics"].claim) == {"plain_deeper_worse", "residual_beats_plain",
                                                        "residual_deeper_no_worse", "plain_penalty_exceeds_residual"}
    why = v[v.protocol == "diagnostics"].set_index("claim").verdict  # no diagnostics.csv: said, not guessed
    assert why["plain_gradients_vanish"] == why["block_gain_at_least_one"] == "not measured"
    assert {"margin", "se", "threshold", "seeds"} <= set(v.columns)


def test_figures_render_from_a_real_tiny_run(tmp_path, generated_cifar):
    from repro.train.loop import run

    for sc in ("none", "A"):
        run(compose(tiny_run_overrides(tmp_path / "results", generated_cifar, f"model.shortcut={sc}", "exp_name=fig6_plain")))
    out = tmp_path / "plots"
    art = registry.render("fig6", tmp_path / "results", out)
    assert "plain-20" not in art.missing and "ResNet-20" not in art.missing
    assert registry.render("fig7", tmp_path / "results", out).missing == ["plain-56", "ResNet-56", "ResNet-110"]
    write_report(tmp_path / "results", out, [tmp_path / "results" / "fig6_plain"], demo=True)
    md = (out / "report.md").read_text()
    assert "differs from the paper: " in md and "20 of 64000 iterations" in md


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
    assert main(["gaps", "--results", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "train_err: mean |gap| 0.0833, max 0.2000 over 3 evaluations" in capsys.readouterr().out
    assert main(["gaps", "--results", str(tmp_path / "a")]) == 2


def test_data_parallel_processes_count_as_bn_chunks_in_the_protocol():
    """Two processes of a batch of 128 train as one process with optim.splits=2 (BN over 64 each): one
    protocol, labelled by its BN batch; the paper's single BN batch of 128 is another."""
    from repro.protocol import identity, label
    from repro.train.rundir import run_diff

    config = {"data": {"name": "synthetic"}, "model": {"family": "cifar10"}, "optim": {"batch_size": 128, "splits": 1}}
    split = {**config, "optim": {"batch_size": 128, "splits": 2}}
    assert identity(config, {"processes": 2}) == identity(split, {}) != identity(config, {})
    assert label(identity(config, {"processes": 2})) == "synthetic, BN over 64, arithmetic unrecorded"
    meta = {"processes": 2, "fast": {"bf16": False}}
    assert run_diff(config, meta, split, "fp32", processes=1) == {}  # may resume in one process with 2 splits
    assert list(run_diff(config, meta, config, "fp32", processes=1)) == ["optim.splits"]  # not with one BN batch


def test_the_demos_noise_floors_are_the_spread_of_its_committed_seeds():
    """verdicts.DEMO_NOISE_FLOOR is not a chosen number: it is recomputed here from the committed seed sets."""
    from conftest import ROOT

    from repro.plots.verdicts import DEMO_NOISE_FLOOR, demo_floor, pooled_seed_std
    from repro.results import distinct_runs

    assert set(DEMO_NOISE_FLOOR) == {"deadleaves", "cifar10"}
    for data, floor in DEMO_NOISE_FLOOR.items():
        folders = sorted(ROOT.glob(f"results/demo-8-20-seed*/demo-{data}"))
        if data == "deadleaves":
            folders.append(ROOT / "results/demo-candidates/depth8-20/demo-deadleaves")  # seed 0: the screening run
        final = final_rows(distinct_runs(read_results(folders)))
        assert final.seed.nunique() >= 3 and final.protocol.nunique() == 1
        assert pooled_seed_std(final) == pytest.approx(floor, abs=0.005)
        assert demo_floor(data)[0] == floor and "measured" in demo_floor(data)[1]
    assert demo_floor("synthetic")[1].startswith("the default")


def test_the_committed_imagenette_set_renders_fig4_table2_and_verdicts(tmp_path):
    from conftest import ROOT

    folder = ROOT / "results" / "fig4_short"
    table = registry.render("table2_imagenette", ROOT / "results", tmp_path, [folder])
    shown = pd.read_csv(tmp_path / "table2_imagenette.csv")
    assert set(shown.net) == {"plain-18", "plain-34", "ResNet-18", "ResNet-34"} and (shown["eval"] == "10-crop").all()
    assert shown.top1.between(0, 100).all() and shown.top5.between(0, 100).all() and not table.missing
    assert set(shown.protocol) == {shown.protocol.iloc[0]} and "imagenette-4k" in shown.protocol.iloc[0]
    fig = registry.render("fig4_imagenette", ROOT / "results", tmp_path, [folder], ylim="auto")
    assert (tmp_path / "fig4_imagenette.png").exists() and not fig.missing
    runs = registry.runs_of(registry.select(ROOT / "results", "fig4_imagenette", [folder]), "imagenette")
    vs = {v.claim: v.verdict for v in verdicts(runs, "imagenette", runs.protocol.iloc[0])}
    assert "not measured" not in vs.values()
