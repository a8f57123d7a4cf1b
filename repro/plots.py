"""The paper's figures and tables, regenerated from results/ only (never torch, never model code).

    python -m repro.plots fig6              # one artefact, from the default experiments under results/
    python -m repro.plots all               # every artefact + plots/report.md and report.html
    python -m repro.plots all --results results/my_sweep --out plots/my_sweep

Each figure is saved as PNG and PDF, each table as Markdown and CSV. Runs that are missing are listed in
the caption (never silently skipped); runs still in progress are drawn up to their last row.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .names import display_name  # noqa: E402
from .results import (ResultsError, curve_gaps, read_finals, read_metrics, read_responses,  # noqa: E402
                      read_results)

# Paper values (paper.md; §4.1, §4.2). Test error in %.
PAPER_TABLE6 = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43, 1202: 7.93}
PAPER_TABLE6_MEAN = {110: (6.61, 0.16)}  # "best (mean ± std)" over 5 runs
PAPER_TABLE2 = {(18, "none"): 27.94, (18, "A"): 27.88, (34, "none"): 28.54, (34, "A"): 25.03}  # top-1, 10-crop
PAPER_TABLE3 = {(34, "none"): (28.54, 10.02), (34, "A"): (25.03, 7.76), (34, "B"): (24.52, 7.46),
                (34, "C"): (24.19, 7.40), (50, "B"): (22.85, 6.71), (101, "B"): (21.75, 6.05),
                (152, "B"): (21.43, 5.71)}
# One colour per depth, the same in every panel and figure.
DEPTH_COLORS = {8: "#8c564b", 14: "#bcbd22", 20: "#e6a000", 32: "#1f77b4", 44: "#2ca02c", 56: "#d62728",
                110: "#000000", 1202: "#9467bd", 18: "#1f77b4", 34: "#d62728", 50: "#2ca02c", 101: "#ff7f0e",
                152: "#000000"}
# Which experiments under results/ feed each artefact by default (first existing group wins per net).
SOURCES = {
    "fig1": ["fig1", "fig6_plain"],
    "fig6": ["fig6_plain", "fig6_resnet", "fig6_1202", "table6"],
    "fig7": ["fig6_plain", "fig6_resnet"],
    "table6": ["table6", "fig6_resnet", "fig6_1202", "fig6_plain"],
    "fig4": ["fig4", "table2", "fig4_imagenette"],
    "table2": ["table2", "fig4", "fig4_imagenette"],
    "table3": ["table3", "imagenet_deep"],
}
Net = tuple[int, str]  # (depth, shortcut)


@dataclass
class Artefact:
    """What one figure or table function made: files, a caption, and the runs it could not find."""

    name: str
    title: str
    files: list[Path] = field(default_factory=list)
    caption: str = ""
    missing: list[str] = field(default_factory=list)
    table: pd.DataFrame | None = None


def net_color(depth: int) -> str:
    return DEPTH_COLORS.get(depth, plt.cm.tab10(depth % 10))


def curves(df: pd.DataFrame, net: Net, column: str) -> pd.DataFrame | None:
    """Mean, min and max of `column` over the seeds of `net`, per step (None if no run)."""
    sub = df[(df.depth == net[0]) & (df.shortcut == net[1])]
    if sub.empty:
        return None
    return sub.groupby("step")[column].agg(["mean", "min", "max", "count"]).reset_index()


def label(df: pd.DataFrame, net: Net) -> str:
    sub = df[(df.depth == net[0]) & (df.shortcut == net[1])]
    seeds = sub.seed.nunique()
    text = display_name(*net) + (f" ({seeds} seeds)" if seeds > 1 else "")
    status = set(sub.status)
    if "running" in status or "preempted" in status:
        text += " (in progress)"
    if "diverged" in status:
        text += " (diverged)"
    return text


def draw(ax, df: pd.DataFrame, nets: list[Net], columns: dict[str, dict], ylim) -> list[str]:
    """Draw `columns` (e.g. train_err dashed, test_err bold) for each net; return the missing nets.
    The x axis is in 1e4 iterations as in the paper, or in iterations for runs shorter than 1e4."""
    missing, unit = [], 1e4 if not df.empty and df.step.max() >= 10_000 else 1
    for net in nets:
        drawn = False
        for i, (column, style) in enumerate(columns.items()):
            c = curves(df, net, column)
            if c is None:
                continue
            x = c["step"] / unit
            kw = dict(color=net_color(net[0]), **style)
            ax.plot(x, 100 * c["mean"], label=label(df, net) if i == len(columns) - 1 else None, **kw)
            if c["count"].max() > 1:  # several seeds: min-max band around the mean
                ax.fill_between(x, 100 * c["min"], 100 * c["max"], color=kw["color"], alpha=0.15, lw=0)
            drawn = True
        if not drawn:
            missing.append(display_name(*net))
    ax.set_xlabel("iter. (1e4)" if unit == 1e4 else "iter.")
    ax.set_ylabel("error (%)")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    if ax.lines:
        handles, labels = ax.get_legend_handles_labels()
        if len(columns) > 1:  # what the line styles mean, once
            names = {"train_err": "training", "test_err": "test"}
            handles += [Line2D([], [], color="0.3", **st) for st in columns.values()]
            labels += [names.get(col, col) for col in columns]
        ax.legend(handles, labels, fontsize=7, loc="upper right")
    return missing


def save(fig, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = [out / f"{name}.png", out / f"{name}.pdf"]
    fig.savefig(files[0], dpi=150, bbox_inches="tight")
    fig.savefig(files[1], bbox_inches="tight", metadata={"CreationDate": None})  # reproducible bytes
    plt.close(fig)
    return files


def save_table(table: pd.DataFrame, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / f"{name}.csv", index=False)
    (out / f"{name}.md").write_text(markdown_table(table) + "\n")
    return [out / f"{name}.md", out / f"{name}.csv"]


def markdown_table(table: pd.DataFrame) -> str:
    cells = [[str(c) for c in table.columns]] + [["" if pd.isna(v) else str(v) for v in row] for row in table.values]
    lines = ["| " + " | ".join(r) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("---" for _ in table.columns) + "|")
    return "\n".join(lines)


TRAIN_TEST = {"train_err": dict(ls="--", lw=1.0), "test_err": dict(ls="-", lw=2.0)}  # Fig. 6's convention


def _caption(missing: list[str], base: str) -> str:
    return base + (f" Missing runs (not drawn): {', '.join(missing)}." if missing else "")


def fig1(df: pd.DataFrame, out: Path, ylim=(0, 20)) -> Artefact:
    """Fig. 1: plain-20 vs plain-56, training error (left) and test error (right)."""
    nets = [(20, "none"), (56, "none")]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    missing = draw(axes[0], df, nets, {"train_err": dict(ls="-", lw=1.5)}, ylim)
    draw(axes[1], df, nets, {"test_err": dict(ls="-", lw=1.5)}, ylim)
    axes[0].set_ylabel("training error (%)")
    axes[1].set_ylabel("test error (%)")
    a = Artefact("fig1", "Fig. 1 — plain-20 vs plain-56 on CIFAR-10", save(fig, out, "fig1"), missing=missing)
    a.caption = _caption(missing, "Training error (left) and test error (right). Paper: the deeper plain net has "
                                  "higher training error, and thus test error.")
    return a


def fig6(df: pd.DataFrame, out: Path, ylim=(0, 20)) -> Artefact:
    """Fig. 6: plain-20/32/44/56; ResNet-20/32/44/56/110; ResNet-110 vs 1202. Dashed train, bold test."""
    panels = [[(d, "none") for d in (20, 32, 44, 56)], [(d, "A") for d in (20, 32, 44, 56, 110)],
              [(110, "A"), (1202, "A")]]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    missing = []
    for ax, nets in zip(axes, panels):
        missing += [m for m in draw(ax, df, nets, TRAIN_TEST, ylim) if m not in missing]
    a = Artefact("fig6", "Fig. 6 — training on CIFAR-10", save(fig, out, "fig6"), missing=missing)
    a.caption = _caption(missing, "Dashed: training error; bold: test error. Left: plain nets; middle: ResNets; "
                                  "right: ResNet-110 and 1202.")
    return a


def degradation(df: pd.DataFrame, out: Path, ylim=None) -> Artefact:
    """Fig. 6 style for whatever depths a sweep has (the demo): plain nets left, residual nets right."""
    plain = sorted({(d, s) for d, s in zip(df.depth, df.shortcut) if s == "none"})
    res = sorted({(d, s) for d, s in zip(df.depth, df.shortcut) if s != "none"})
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    draw(axes[0], df, plain, TRAIN_TEST, ylim)
    draw(axes[1], df, res, TRAIN_TEST, ylim)
    axes[0].set_title("plain", fontsize=9)
    axes[1].set_title("residual", fontsize=9)
    a = Artefact("degradation", "Plain vs residual nets", save(fig, out, "degradation"))
    a.caption = "Dashed: training error (mean over the mini-batches since the previous point); bold: test error."
    return a


def fig4(df: pd.DataFrame, out: Path, ylim=(20, 60)) -> Artefact:
    """Fig. 4: ImageNet plain-18/34 (left) and ResNet-18/34 (right); thin train, bold centre-crop val."""
    styles = {"train_err": dict(ls="-", lw=0.8), "test_err": dict(ls="-", lw=2.2)}
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    missing = draw(axes[0], df, [(18, "none"), (34, "none")], styles, ylim)
    missing += draw(axes[1], df, [(18, "A"), (34, "A")], styles, ylim)
    a = Artefact("fig4", "Fig. 4 — training on ImageNet", save(fig, out, "fig4"), missing=missing)
    a.caption = _caption(missing, "Thin: training error; bold: validation error of the centre crop.")
    return a


FIG7_NETS = [(20, "none"), (56, "none"), (20, "A"), (56, "A"), (110, "A")]


def fig7(resp: pd.DataFrame, out: Path, nets: list[Net] | None = None) -> Artefact:
    """Fig. 7: std of layer responses on the test set, in layer order (top) and sorted (bottom).
    `nets` defaults to the paper's (plain-20/56, ResNet-20/56/110)."""
    nets = nets or FIG7_NETS
    fig, axes = plt.subplots(2, 1, figsize=(7, 6), constrained_layout=True)
    missing = []
    for depth, sc in nets:
        sub = resp[(resp.depth == depth) & (resp.shortcut == sc)] if not resp.empty else resp
        if sub.empty:
            missing.append(display_name(depth, sc))
            continue
        std = sub.groupby("layer")["std"].mean()
        kw = dict(color=net_color(depth), ls="--" if sc == "none" else "-", lw=1.2, label=display_name(depth, sc))
        axes[0].plot(std.index, std.values, **kw)
        axes[1].plot(np.arange(1, len(std) + 1), np.sort(std.values)[::-1], **kw)
    axes[0].set_xlabel("layer index (original)")
    axes[1].set_xlabel("layer index (sorted by magnitude)")
    for ax in axes:
        ax.set_ylabel("std")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    a = Artefact("fig7", "Fig. 7 — standard deviation of layer responses on CIFAR-10", save(fig, out, "fig7"),
                 missing=missing)
    a.caption = _caption(missing, "Responses are the outputs of each 3x3 layer after BN, before the nonlinearity "
                                  "and addition. Paper: ResNets' responses are smaller than plain nets', and deeper "
                                  "ResNets' smaller still.")
    return a


def final_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The last evaluation of each run ("final" never means the best test epoch)."""
    return df.sort_values("step").groupby("run", as_index=False).tail(1)


def fmt(mean: float, std: float | None = None) -> str:
    return f"{mean:.2f}" if std is None or np.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def table6(df: pd.DataFrame, out: Path) -> Artefact:
    """Table 6: final test error per net: ours (mean ± std, best), the paper's, the difference, params."""
    final = final_rows(df)
    rows, missing = [], []
    for sc in ("A", "none"):
        for depth in sorted(set(final.depth[final.shortcut == sc]) | (set(PAPER_TABLE6) if sc == "A" else set())):
            runs = final[(final.depth == depth) & (final.shortcut == sc)]
            paper = PAPER_TABLE6.get(depth) if sc == "A" else None
            if runs.empty:
                missing.append(display_name(depth, sc))
                continue
            err = 100 * runs.test_err
            ours = fmt(err.mean(), err.std() if len(err) > 1 else None)
            rows.append({
                "net": display_name(depth, sc),
                "params": f"{int(runs.params.iloc[0]):,}" if pd.notna(runs.params.iloc[0]) else "",
                "runs": len(runs),
                "steps": int(runs.step.max()),
                "ours: error (%)": ours,
                "ours: best (%)": f"{err.min():.2f}" if len(err) > 1 else "",
                "paper (%)": (f"{paper:.2f}" + (f" ({fmt(*PAPER_TABLE6_MEAN[depth])})" if depth in PAPER_TABLE6_MEAN else ""))
                if paper else "not tabulated in the paper",
                "difference": f"{err.mean() - paper:+.2f}" if paper else "",
            })
    table = pd.DataFrame(rows, columns=["net", "params", "runs", "steps", "ours: error (%)", "ours: best (%)",
                                        "paper (%)", "difference"])
    a = Artefact("table6", "Table 6 — CIFAR-10 test error (%)", save_table(table, out, "table6"), missing=missing,
                 table=table)
    a.caption = _caption(missing, "Final = the last evaluation of each run (no selection on the test set). "
                                  "Paper: ResNet-110 is 'best (mean ± std)' of 5 runs; plain nets are only plotted "
                                  "in the paper, not tabulated.")
    return a


def _imagenet_finals(df: pd.DataFrame, finals: pd.DataFrame) -> pd.DataFrame:
    """Per run: 10-crop top-1/top-5 error (%) when the run evaluated it, else the last centre-crop row."""
    last = final_rows(df)[["run", "depth", "shortcut", "test_err"]].copy()
    last["top1"], last["top5"], last["eval"] = 100 * last.test_err, np.nan, "centre crop"
    if not finals.empty:
        last = last.merge(finals[["run", "top1_err", "top5_err", "crops"]], on="run", how="left")
        ten = last.top1_err.notna()
        last.loc[ten, "top1"], last.loc[ten, "top5"] = 100 * last.top1_err[ten], 100 * last.top5_err[ten]
        last.loc[ten, "eval"] = last.crops[ten].map(lambda c: f"{int(c)}-crop")
    return last


def table2(df: pd.DataFrame, finals: pd.DataFrame, out: Path) -> Artefact:
    last = _imagenet_finals(df, finals)
    rows, missing = [], []
    for depth in (18, 34):
        row = {"layers": depth}
        for sc, col in (("none", "plain"), ("A", "ResNet")):
            runs = last[(last.depth == depth) & (last.shortcut == sc)]
            if runs.empty:
                missing.append(display_name(depth, sc))
            row[f"{col}: ours"] = "" if runs.empty else f"{runs.top1.mean():.2f} ({runs['eval'].iloc[0]})"
            row[f"{col}: paper"] = f"{PAPER_TABLE2[(depth, sc)]:.2f}"
        rows.append(row)
    table = pd.DataFrame(rows)
    a = Artefact("table2", "Table 2 — ImageNet top-1 error (%), 10-crop", save_table(table, out, "table2"),
                 missing=missing, table=table)
    a.caption = _caption(missing, "Ours: final model; the evaluation used is given in brackets.")
    return a


def table3(df: pd.DataFrame, finals: pd.DataFrame, out: Path) -> Artefact:
    last = _imagenet_finals(df, finals)
    rows, missing = [], []
    for (depth, sc), (p1, p5) in PAPER_TABLE3.items():
        runs = last[(last.depth == depth) & (last.shortcut == sc)]
        if runs.empty:
            missing.append(display_name(depth, sc))
        rows.append({"net": display_name(depth, sc),
                     "ours: top-1": "" if runs.empty else f"{runs.top1.mean():.2f}",
                     "ours: top-5": "" if runs.empty or runs.top5.isna().all() else f"{runs.top5.mean():.2f}",
                     "paper: top-1": f"{p1:.2f}", "paper: top-5": f"{p5:.2f}",
                     "eval": "" if runs.empty else runs["eval"].iloc[0]})
    table = pd.DataFrame(rows)
    a = Artefact("table3", "Table 3 — ImageNet error (%), 10-crop, top-1 / top-5", save_table(table, out, "table3"),
                 missing=missing, table=table)
    a.caption = _caption(missing, "Ours: final model.")
    return a


def final_errors(df: pd.DataFrame, out: Path) -> Artefact:
    """A small table of every net's final training and test error (the demo's table)."""
    final = final_rows(df)
    rows = []
    for (depth, sc), runs in final.groupby(["depth", "shortcut"]):
        tr, te = 100 * runs.train_err, 100 * runs.test_err
        rows.append({"net": display_name(depth, sc), "runs": len(runs), "steps": int(runs.step.max()),
                     "final train error (%)": fmt(tr.mean(), tr.std() if len(tr) > 1 else None),
                     "final test error (%)": fmt(te.mean(), te.std() if len(te) > 1 else None),
                     "status": ", ".join(sorted(set(runs.status)))})
    table = pd.DataFrame(rows)
    a = Artefact("final_errors", "Final errors", save_table(table, out, "final_errors"), table=table)
    a.caption = "Training error: mean over the mini-batches of the last evaluation interval. Test error: last evaluation."
    return a


ARTEFACTS = ("fig1", "fig6", "fig7", "table6", "fig4", "table2", "table3")


def select(results: Path, name: str, explicit: list[Path] | None) -> pd.DataFrame:
    """The runs an artefact draws: those under `explicit` folders, else its default experiments;
    a net found in several experiments is taken from the first (no double counting)."""
    if explicit:
        return read_results(explicit)
    folders = [results / e for e in SOURCES[name] if (results / e).exists()]
    if not folders:
        return read_results([])
    frames = [read_results(f) for f in folders]
    seen, keep = set(), []
    for f in frames:
        if f.empty:
            continue
        f = f[~f.run.isin(seen)]
        seen |= set(f.run)
        keep.append(f)
    return pd.concat(keep, ignore_index=True) if keep else read_results([])


def render(name: str, results: Path, out: Path, explicit: list[Path] | None = None, ylim="paper") -> Artefact:
    """Render one artefact by name."""
    df = select(results, name, explicit)
    cifar, imagenet = df[df.family == "cifar10"], df[df.family == "imagenet"]
    lim = None if ylim == "auto" else ylim
    if name == "fig1":
        return fig1(cifar, out, **({} if ylim == "paper" else {"ylim": lim}))
    if name == "fig6":
        return fig6(cifar, out, **({} if ylim == "paper" else {"ylim": lim}))
    if name == "fig4":
        return fig4(imagenet, out, **({} if ylim == "paper" else {"ylim": lim}))
    if name == "fig7":
        paths = explicit or [results / e for e in SOURCES["fig7"] if (results / e).exists()]
        return fig7(read_responses(paths), out)
    if name == "table6":
        return table6(cifar, out)
    finals_paths = explicit or [results / e for e in SOURCES[name] if (results / e).exists()]
    finals = read_finals(finals_paths)
    return (table2 if name == "table2" else table3)(imagenet, finals, out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m repro.plots", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=[*ARTEFACTS, "all", "report", "demo", "gaps"],
                   help="an artefact; 'all'/'report' = every artefact and the report; 'demo' = the demo's report; "
                        "'gaps' = how far the curves of two runs (--results A B) are apart")
    p.add_argument("--results", type=Path, nargs="*", default=None,
                   help="run or experiment folders to draw from (default: each artefact's experiments under --root)")
    p.add_argument("--root", type=Path, default=Path("results"), help="results root (default: results)")
    p.add_argument("--out", type=Path, default=Path("plots"), help="output folder (default: plots)")
    p.add_argument("--ylim", default="paper", help="'paper' (the paper's axes), 'auto', or LOW,HIGH in %%")
    args = p.parse_args(argv)
    ylim = args.ylim if args.ylim in ("paper", "auto") else tuple(float(v) for v in args.ylim.split(","))
    try:
        if args.what == "gaps":
            if len(args.results or []) != 2:
                raise ResultsError("gaps compares two runs: --results RUN_A RUN_B (run folders)")
            a, b = (read_metrics(Path(r) / "metrics.csv") for r in args.results)
            for col, (mean, top) in curve_gaps(a, b).items():
                print(f"{col:>10}: mean |gap| {mean:.4f}, max {top:.4f} over {len(a)} evaluations")
        elif args.what in ("all", "report", "demo"):
            from .report import write_report

            paths = write_report(args.root, args.out, args.results, ylim, demo=args.what == "demo")
            print("\n".join(f"wrote {p}" for p in paths))
        else:
            art = render(args.what, args.root, args.out, args.results, ylim)
            print("\n".join(f"wrote {f}" for f in art.files))
            if art.missing:
                print(f"missing runs: {', '.join(art.missing)}")
    except ResultsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
