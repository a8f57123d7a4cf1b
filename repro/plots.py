"""The paper's figures and tables, regenerated from results/ only (never torch, never model code).

    python -m repro.plots fig6              # one artefact, from the default experiments under results/
    python -m repro.plots all               # every artefact + plots/report.md and report.html
    python -m repro.plots all --results results/my_sweep --out plots/my_sweep

Each figure is saved as PNG and PDF, each table as Markdown and CSV. Runs that are missing are listed in
the caption (never silently skipped); runs still in progress are drawn up to their last row.
"""
from __future__ import annotations

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
from .results import (Net, ResultsError, distinct_runs, final_rows, last_rows, net_rows, read_finals,  # noqa: E402
                      read_responses, read_results, unfinished)

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
    sub = net_rows(df, net)
    if sub.empty:
        return None
    return sub.groupby("step")[column].agg(["mean", "min", "max", "count"]).reset_index()


def label(df: pd.DataFrame, net: Net) -> str:
    """The legend entry: the paper's name, the number of seeds, and how unfinished runs ended so far."""
    sub = net_rows(df, net)
    seeds = sub.seed.nunique()
    text = display_name(*net) + (f" ({seeds} seeds)" if seeds > 1 else "")
    last = last_rows(sub)
    states = sorted({"in progress" if s in ("running", "preempted") else s
                     for s, f in zip(last.status, last.finished) if not f})
    return text + "".join(f" ({s})" for s in states)


def draw(ax, df: pd.DataFrame, nets: list[Net], columns: dict[str, dict], ylim, log: bool = False) -> list[str]:
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
    ax.set_ylabel("error (%)" + (", log scale" if log else ""))
    if log:
        ax.set_yscale("log")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3, which="both" if log else "major")
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


def save_table(table: pd.DataFrame, out: Path, name: str, shown: pd.DataFrame | None = None) -> list[Path]:
    """The tidy numeric `table` as CSV (for scripts), `shown` (formatted for people) as Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / f"{name}.csv", index=False)
    (out / f"{name}.md").write_text(markdown_table(table if shown is None else shown) + "\n")
    return [out / f"{name}.md", out / f"{name}.csv"]


def markdown_table(table: pd.DataFrame) -> str:
    cells = [[str(c) for c in table.columns]] + [["" if pd.isna(v) else str(v) for v in row] for row in table.values]
    lines = ["| " + " | ".join(r) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("---" for _ in table.columns) + "|")
    return "\n".join(lines)


TRAIN_TEST = {"train_err": dict(ls="--", lw=1.0), "test_err": dict(ls="-", lw=2.0)}  # Fig. 6's convention


def _caption(missing: list[str], base: str, scope: str = "") -> str:
    return base + (f" Missing runs (not drawn): {', '.join(missing)}." if missing else "") + \
        (f" {scope}" if scope else "")


def fig1(df: pd.DataFrame, out: Path, ylim=(0, 20), scope: str = "") -> Artefact:
    """Fig. 1: plain-20 vs plain-56, training error (left) and test error (right)."""
    nets = [(20, "none"), (56, "none")]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    missing = draw(axes[0], df, nets, {"train_err": dict(ls="-", lw=1.5)}, ylim)
    draw(axes[1], df, nets, {"test_err": dict(ls="-", lw=1.5)}, ylim)
    axes[0].set_ylabel("training error (%)")
    axes[1].set_ylabel("test error (%)")
    a = Artefact("fig1", "Fig. 1 — plain-20 vs plain-56 on CIFAR-10", save(fig, out, "fig1"), missing=missing)
    a.caption = _caption(missing, "Training error (left) and test error (right). Paper: the deeper plain net has "
                                  "higher training error, and thus test error.", scope)
    return a


def fig6(df: pd.DataFrame, out: Path, ylim=(0, 20), scope: str = "") -> Artefact:
    """Fig. 6: plain-20/32/44/56; ResNet-20/32/44/56/110; ResNet-110 vs 1202. Dashed train, bold test.
    The right panel's training errors end near 0 (1202: < 0.1%, §4.2), so its axis is logarithmic."""
    panels = [[(d, "none") for d in (20, 32, 44, 56)], [(d, "A") for d in (20, 32, 44, 56, 110)],
              [(110, "A"), (1202, "A")]]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    axes[1].sharey(axes[0])  # plain and residual nets on one scale, also when the axis is automatic
    missing = []
    for i, (ax, nets) in enumerate(zip(axes, panels)):
        log = i == 2
        lim = None if log and ylim is not None else ylim
        missing += [m for m in draw(ax, df, nets, TRAIN_TEST, lim, log=log) if m not in missing]
    a = Artefact("fig6", "Fig. 6 — training on CIFAR-10", save(fig, out, "fig6"), missing=missing)
    a.caption = _caption(missing, "Dashed: training error; bold: test error. Left: plain nets; middle: ResNets; "
                                  "right: ResNet-110 and 1202 (log scale: both end near 0% training error).", scope)
    return a


def degradation(df: pd.DataFrame, out: Path, ylim=None, scope: str = "") -> Artefact:
    """Fig. 6 style for whatever depths a sweep has (the demo): plain nets left, residual nets right."""
    plain = sorted({(d, s) for d, s in zip(df.depth, df.shortcut) if s == "none"})
    res = sorted({(d, s) for d, s in zip(df.depth, df.shortcut) if s != "none"})
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    draw(axes[0], df, plain, TRAIN_TEST, ylim)
    draw(axes[1], df, res, TRAIN_TEST, ylim)
    axes[0].set_title("plain", fontsize=9)
    axes[1].set_title("residual", fontsize=9)
    a = Artefact("degradation", "Plain vs residual nets", save(fig, out, "degradation"))
    a.caption = _caption([], "Dashed: training error (mean over the mini-batches since the previous point); bold: "
                             "test error.", scope)
    return a


def fig4(df: pd.DataFrame, out: Path, ylim=(20, 60), scope: str = "", data: str = "imagenet") -> Artefact:
    """Fig. 4: ImageNet plain-18/34 (left) and ResNet-18/34 (right); thin train, bold centre-crop val."""
    styles = {"train_err": dict(ls="-", lw=0.8), "test_err": dict(ls="-", lw=2.2)}
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    missing = draw(axes[0], df, [(18, "none"), (34, "none")], styles, ylim)
    missing += draw(axes[1], df, [(18, "A"), (34, "A")], styles, ylim)
    name = "fig4" + suffix(data)
    a = Artefact(name, f"Fig. 4 — training on {PRETTY_DATA[data]}", save(fig, out, name), missing=missing)
    a.caption = _caption(missing, "Thin: training error; bold: validation error of the centre crop.", scope)
    return a


FIG7_NETS = [(20, "none"), (56, "none"), (20, "A"), (56, "A"), (110, "A")]


def fig7(resp: pd.DataFrame, out: Path, nets: list[Net] | None = None, scope: str = "") -> Artefact:
    """Fig. 7: std of layer responses on the test set, in layer order (top) and sorted (bottom).
    `nets` defaults to the paper's (plain-20/56, ResNet-20/56/110)."""
    nets = nets or FIG7_NETS
    fig, axes = plt.subplots(2, 1, figsize=(7, 6), constrained_layout=True)
    missing = []
    for net in nets:
        sub = net_rows(resp, net) if not resp.empty else resp
        if sub.empty:
            missing.append(display_name(*net))
            continue
        std = sub.groupby("layer")["std"].mean()
        kw = dict(color=net_color(net[0]), ls="--" if net[1] == "none" else "-", lw=1.2, label=display_name(*net))
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
                                  "ResNets' smaller still.", scope)
    return a


def _stats(values: pd.Series) -> dict:
    """mean, sample std (NaN for one run) and best (lowest) of errors in %."""
    v = 100 * values.astype(float)
    return {"mean": v.mean(), "std": v.std() if len(v) > 1 else np.nan, "best": v.min()}


def _num(x: float, fmt: str = ".2f") -> str:
    return "" if pd.isna(x) else format(x, fmt)


def protocol_order(final: pd.DataFrame) -> list[str]:
    """Protocol keys, fewest deviations from the paper first."""
    keys = final.drop_duplicates("protocol_key").sort_values(["deviations", "protocol"])
    return list(keys.protocol_key)


def table6(df: pd.DataFrame, out: Path, scope: str = "") -> Artefact:
    """Table 6: final test error of finished runs, one row per (net, protocol): ours (mean, std, best) beside
    the paper's figure comparable with it (its mean where it gives one, else its single number; its best
    beside our best), the difference of the means, params."""
    final = final_rows(df)
    rows, missing = [], []
    for key in protocol_order(final):
        of = final[final.protocol_key == key]
        for sc in ("A", "none"):
            for depth in sorted(set(of.depth[of.shortcut == sc])):
                runs = net_rows(of, (depth, sc))
                st = _stats(runs.test_err)
                paper_mean, paper_std = PAPER_TABLE6_MEAN.get(depth, (PAPER_TABLE6.get(depth), np.nan)) \
                    if sc == "A" else (np.nan, np.nan)
                paper_best = PAPER_TABLE6.get(depth, np.nan) if sc == "A" and depth in PAPER_TABLE6_MEAN else np.nan
                rows.append({"net": display_name(depth, sc), "depth": depth, "shortcut": sc,
                             "protocol": runs.protocol.iloc[0], "runs": len(runs), **st,
                             "paper": np.nan if paper_mean is None else paper_mean, "paper_std": paper_std,
                             "paper_best": paper_best,
                             # only where the protocol is the paper's: otherwise the numbers are not comparable
                             "difference": st["mean"] - paper_mean if runs.protocol.iloc[0] == "paper"
                             and paper_mean is not None and not pd.isna(paper_mean) else np.nan,
                             "params": runs.params.iloc[0]})
    expected = {display_name(d, "A") for d in PAPER_TABLE6}
    missing = sorted(expected - {r["net"] for r in rows}, key=lambda n: int(n.split("-")[1].split()[0]))
    table = pd.DataFrame(rows, columns=["net", "depth", "shortcut", "protocol", "runs", "mean", "std", "best", "paper",
                                        "paper_std", "paper_best", "difference", "params"])
    shown = pd.DataFrame({
        "net": table.net, "protocol": table.protocol, "runs": table.runs,
        "ours: mean ± std (%)": [_num(m) + ("" if pd.isna(s) else f" ± {s:.2f}")
                                 for m, s in zip(table["mean"], table["std"])],
        "ours: best (%)": [_num(b) if r > 1 else "" for b, r in zip(table.best, table.runs)],
        "paper (%)": [("" if pd.isna(p) else _num(p) + ("" if pd.isna(s) else f" ± {s:.2f}")) or
                      ("not tabulated" if sc == "none" else "")
                      for p, s, sc in zip(table.paper, table.paper_std, table.shortcut)],
        "paper best (%)": [_num(b) for b in table.paper_best],
        "difference (means)": [_num(d, "+.2f") for d in table.difference],
        "params": ["" if pd.isna(p) else f"{int(p):,}" for p in table.params],
    })
    a = Artefact("table6", "Table 6 — CIFAR-10 test error (%)", save_table(table, out, "table6", shown),
                 missing=missing, table=shown)
    a.caption = _caption(missing, "One row per net and protocol (runs of different protocols are never pooled). "
                                  "Final = the last evaluation of a finished run (no selection on the test set). Our "
                                  "mean is compared with the paper's mean where it gives one (ResNet-110: 6.61 ± 0.16 "
                                  "over 5 runs; its best run, 6.43, beside our best), else with its single number; "
                                  "the difference is given only for runs of the paper's protocol. Plain nets are only "
                                  "plotted in the paper.", scope)
    return a


def _imagenet_finals(df: pd.DataFrame, finals: pd.DataFrame) -> pd.DataFrame:
    """Per finished run: 10-crop top-1/top-5 error (%) when the run evaluated it, else the last centre-crop row."""
    last = final_rows(df)[["path", "depth", "shortcut", "protocol", "protocol_key", "deviations", "test_err"]].copy()
    last["top1"], last["top5"], last["eval"] = 100 * last.test_err, np.nan, "centre crop"
    if not finals.empty:
        last = last.merge(finals[["path", "top1_err", "top5_err", "crops"]], on="path", how="left")
        ten = last.top1_err.notna()
        last.loc[ten, "top1"], last.loc[ten, "top5"] = 100 * last.top1_err[ten], 100 * last.top5_err[ten]
        last.loc[ten, "eval"] = last.crops[ten].map(lambda c: f"{int(c)}-crop")
    return last


def _imagenet_table(df: pd.DataFrame, finals: pd.DataFrame, paper: dict, data: str) -> pd.DataFrame:
    """One row per (net, protocol) of the finished runs of the nets in `paper` (paper columns only on ImageNet)."""
    last = _imagenet_finals(df, finals)
    rows = []
    for key in protocol_order(last):
        of = last[last.protocol_key == key]
        for net, ref in paper.items():
            runs = net_rows(of, net)
            if runs.empty:
                continue
            ref = ref if isinstance(ref, tuple) else (ref, np.nan)
            rows.append({"net": display_name(*net), "depth": net[0], "shortcut": net[1],
                         "protocol": runs.protocol.iloc[0], "runs": len(runs), "eval": ", ".join(sorted(set(runs["eval"]))),
                         "top1": runs.top1.mean(), "top5": runs.top5.mean(),
                         "paper_top1": ref[0] if data == "imagenet" else np.nan,
                         "paper_top5": ref[1] if data == "imagenet" else np.nan})
    return pd.DataFrame(rows, columns=["net", "depth", "shortcut", "protocol", "runs", "eval", "top1", "top5",
                                       "paper_top1", "paper_top5"])


def _imagenet_shown(table: pd.DataFrame, top5: bool) -> pd.DataFrame:
    cols = {"net": table.net, "protocol": table.protocol, "runs": table.runs, "eval": table["eval"],
            "ours: top-1": table.top1.map(_num), "paper: top-1": table.paper_top1.map(_num)}
    if top5:
        cols |= {"ours: top-5": table.top5.map(_num), "paper: top-5": table.paper_top5.map(_num)}
    return pd.DataFrame(cols)


def _imagenet_missing(table: pd.DataFrame, nets) -> list[str]:
    return [display_name(*n) for n in nets if display_name(*n) not in set(table.net)]


def table2(df: pd.DataFrame, finals: pd.DataFrame, out: Path, scope: str = "", data: str = "imagenet") -> Artefact:
    table = _imagenet_table(df, finals, PAPER_TABLE2, data)
    name = "table2" + suffix(data)
    missing = _imagenet_missing(table, PAPER_TABLE2)
    shown = _imagenet_shown(table, top5=False)
    a = Artefact(name, f"Table 2 — {PRETTY_DATA[data]} top-1 error (%)" + (", 10-crop" if data == "imagenet" else ""),
                 save_table(table, out, name, shown), missing=missing, table=shown)
    note = "Ours: the final model of finished runs, one row per net and protocol; the evaluation used is named."
    if data != "imagenet":
        note += f" The paper's numbers are for ImageNet-1k and are not comparable with runs on {PRETTY_DATA[data]}."
    a.caption = _caption(missing, note, scope)
    return a


def table3(df: pd.DataFrame, finals: pd.DataFrame, out: Path, scope: str = "") -> Artefact:
    table = _imagenet_table(df, finals, PAPER_TABLE3, "imagenet")
    missing = _imagenet_missing(table, PAPER_TABLE3)
    shown = _imagenet_shown(table, top5=True)
    a = Artefact("table3", "Table 3 — ImageNet error (%), 10-crop, top-1 / top-5", save_table(table, out, "table3", shown),
                 missing=missing, table=shown)
    a.caption = _caption(missing, "Ours: the final model of finished runs, one row per net and protocol.", scope)
    return a


def final_errors(df: pd.DataFrame, out: Path, scope: str = "") -> Artefact:
    """Every net's final training and test error, one row per (net, protocol), finished runs only."""
    final = final_rows(df)
    rows = []
    for key in protocol_order(final):
        of = final[final.protocol_key == key]
        for (depth, sc), runs in sorted(of.groupby(["depth", "shortcut"]), key=lambda g: (g[0][1] != "none", g[0][0])):
            tr, te = _stats(runs.train_err), _stats(runs.test_err)
            rows.append({"net": display_name(depth, sc), "protocol": runs.protocol.iloc[0], "runs": len(runs),
                         "steps": int(runs.step.max()), "train_mean": tr["mean"], "train_std": tr["std"],
                         "test_mean": te["mean"], "test_std": te["std"],
                         "train_hours": runs.wall_time.astype(float).mean() / 3600})
    table = pd.DataFrame(rows, columns=["net", "protocol", "runs", "steps", "train_mean", "train_std", "test_mean",
                                        "test_std", "train_hours"])
    pm = lambda m, s: _num(m) + ("" if pd.isna(s) else f" ± {s:.2f}")  # noqa: E731
    shown = pd.DataFrame({"net": table.net, "protocol": table.protocol, "runs": table.runs, "steps": table.steps,
                          "final train error (%)": [pm(m, s) for m, s in zip(table.train_mean, table.train_std)],
                          "final test error (%)": [pm(m, s) for m, s in zip(table.test_mean, table.test_std)],
                          "training time (h)": table.train_hours.map(lambda h: _num(h))})
    a = Artefact("final_errors", "Final errors", save_table(table, out, "final_errors", shown), table=shown)
    a.caption = _caption([], "Finished runs only. Training error: mean over the mini-batches of the last evaluation "
                             "interval. Test error: last evaluation.", scope)
    return a


PRETTY_DATA = {"imagenet": "ImageNet", "imagenette": "Imagenette"}


def suffix(data: str) -> str:
    return "" if data == "imagenet" else f"_{data}"


ARTEFACTS = ("fig1", "fig6", "fig7", "table6", "fig4", "table2", "table3", "fig4_imagenette", "table2_imagenette")


def data_kind(name: str) -> str:
    """Which runs an artefact reads: 'cifar10', 'imagenet' (ImageNet runs only) or 'imagenette'."""
    if name in ("fig1", "fig6", "fig7", "table6", "final_errors"):
        return "cifar10"
    return "imagenette" if name.endswith("_imagenette") else "imagenet"


def runs_of(df: pd.DataFrame, kind: str) -> pd.DataFrame:
    """The rows of one data_kind: CIFAR-family runs, or ImageNet-family runs on ImageNet / Imagenette."""
    if df.empty:
        return df
    return df[df.family == "cifar10"] if kind == "cifar10" else df[(df.family == "imagenet") & (df.data == kind)]


def select(results: Path, name: str, explicit: list[Path] | None) -> pd.DataFrame:
    """The runs an artefact may draw: those under `explicit` folders, else under its default experiments,
    each computation once (a run found in several folders with the same protocol, net and seed: the
    finished one, else the first)."""
    base = name.split("_")[0]
    folders = explicit or [results / e for e in SOURCES[base] if (results / e).exists()]
    return distinct_runs(read_results(folders))


def check_inputs(results: Path, names: list[str], explicit: list[Path] | None, protocol: str | None) -> None:
    """Before anything is written: there are runs to draw, and `protocol` (if given) is one of theirs."""
    sets = [select(results, n, explicit) for n in names] if names else [distinct_runs(read_results(explicit or []))]
    frames = [f for f in sets if not f.empty]
    if not frames:
        where = ", ".join(map(str, explicit)) if explicit else \
            f"{results}/{{{','.join(sorted({e for n in names for e in SOURCES[n.split('_')[0]]}))}}}"
        raise ResultsError(f"no runs under {where}; train some first (README 'Reproducing each figure') or "
                           f"point --results at run or experiment folders")
    if protocol is not None:
        labels = last_rows(pd.concat(frames, ignore_index=True)).protocol.value_counts()
        if protocol not in labels:
            raise ResultsError(f"--protocol {protocol!r} matches no runs; protocols here: "
                               + "; ".join(f"{p!r} ({n} runs)" for p, n in labels.items()))


def choose_protocol(df: pd.DataFrame, wanted: str | None = None) -> tuple[pd.DataFrame, str]:
    """The rows of one protocol and a caption sentence naming it and what was left out. `wanted` is a
    protocol label; by default the protocol that has the most nets (a figure of one net from a side
    experiment, say ResNet-56 in fp32, is not the default), and of those the closest to the paper's
    (fewest deviations), then the one with most runs."""
    if df.empty:
        return df, ""
    runs = last_rows(df)
    runs = runs.assign(net=list(zip(runs.depth, runs.shortcut)))
    counts = runs.groupby(["protocol_key", "protocol", "deviations"]).agg(n=("path", "size"), nets=("net", "nunique")) \
        .reset_index()
    if wanted:
        hit = counts[counts.protocol == wanted]
        if hit.empty:
            return df.iloc[0:0], f"No runs of protocol {wanted}."
        key = hit.protocol_key.iloc[0]
    else:
        key = counts.sort_values(["nets", "deviations", "n"], ascending=[False, True, False]).protocol_key.iloc[0]
    chosen = df[df.protocol_key == key]
    others = counts[counts.protocol_key != key]
    text = f"Protocol: {chosen.protocol.iloc[0]}."
    if len(others):
        text += " Left out (other protocols, never pooled): " + "; ".join(
            f"{p} ({n} run{'s' if n > 1 else ''})" for p, n in zip(others.protocol, others.n)) + "."
    todo = unfinished(chosen)
    if todo:
        text += " Unfinished runs (drawn and labelled, not in tables or verdicts): " + "; ".join(todo) + "."
    return chosen, text


def render(name: str, results: Path, out: Path, explicit: list[Path] | None = None, ylim="paper",
           protocol: str | None = None) -> Artefact:
    """Render one artefact by name: a figure from one protocol of its runs (`protocol`, else
    choose_protocol's default), a table from every protocol (or `protocol`). ImageNet artefacts read only
    runs on ImageNet; the *_imagenette ones only Imagenette runs."""
    data = data_kind(name)
    family = runs_of(select(results, name, explicit), data)
    kw = {} if ylim == "paper" else {"ylim": None if ylim == "auto" else ylim}
    if name.startswith("table"):  # every protocol, one row per (net, protocol); or the one asked for
        chosen = family if protocol is None else choose_protocol(family, protocol)[0]
        todo = unfinished(chosen) if not chosen.empty else []
        scope = ("Unfinished runs (not tabulated): " + "; ".join(todo) + ".") if todo else ""
        if name == "table6":
            return table6(chosen, out, scope)
        finals = read_finals(sorted(set(chosen.path))) if not chosen.empty else read_finals([])
        if name == "table3":
            return table3(chosen, finals, out, scope)
        return table2(chosen, finals, out, scope, data)
    chosen, scope = choose_protocol(family, protocol)
    if name == "fig1":
        return fig1(chosen, out, scope=scope, **kw)
    if name == "fig6":
        return fig6(chosen, out, scope=scope, **kw)
    if name.startswith("fig4"):
        return fig4(chosen, out, scope=scope, data=data, **kw)
    resp = read_responses(sorted(set(chosen.path))) if not chosen.empty else read_responses([])
    resp = resp[resp.path.isin(set(final_rows(chosen).path))] if not resp.empty else resp
    return fig7(resp, out, scope=scope)


if __name__ == "__main__":  # `python -m repro.plots ...`: the command line lives in repro.cli
    from repro.cli import main

    sys.exit(main())
