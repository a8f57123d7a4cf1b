"""The paper's figures, and the choice of runs every artefact is made from, regenerated from results/ only
(never torch, never model code); the tables are repro.plots.tables.

    python -m repro.plots fig6              # one artefact, from the default experiments under results/
    python -m repro.plots all               # every artefact + plots/report.md and report.html
    python -m repro.plots all --results results/my_sweep --out plots/my_sweep

Each figure is saved as PNG and PDF, each table as Markdown and CSV. Runs that are missing are listed in
the caption (never silently skipped); runs still in progress are drawn up to their last row.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from repro.names import display_name  # noqa: E402
from repro.plots.tables import PRETTY_DATA, Artefact, caption, suffix  # noqa: E402
from repro.results import (  # noqa: E402
    Net,
    last_rows,
    net_rows,
)

# One colour per depth, the same in every panel and figure.
DEPTH_COLORS = {8: "#8c564b", 14: "#bcbd22", 20: "#e6a000", 32: "#1f77b4", 44: "#2ca02c", 56: "#d62728",
                110: "#000000", 1202: "#9467bd", 18: "#1f77b4", 34: "#d62728", 50: "#2ca02c", 101: "#ff7f0e",
                152: "#000000"}


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
    states = sorted({"in progress" if s in ("running", "preempted", "interrupted") else s
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
    if log:  # ticks at 1, 2, 5 x 10^k written as plain numbers, as the paper's log panel
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 2, 5)))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3, which="both" if log else "major")
    if not ax.lines and missing:  # an empty panel says why it is empty
        ax.text(0.5, 0.5, "no runs yet:\n" + ", ".join(missing), transform=ax.transAxes, ha="center", va="center",
                color="0.4", fontsize=9)
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


TRAIN_TEST = {"train_err": dict(ls="--", lw=1.0), "test_err": dict(ls="-", lw=2.0)}  # Fig. 6's convention


def fig1(df: pd.DataFrame, out: Path, ylim=(0, 20), scope: str = "") -> Artefact:
    """Fig. 1: plain-20 vs plain-56, training error (left) and test error (right)."""
    nets = [(20, "none"), (56, "none")]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    missing = draw(axes[0], df, nets, {"train_err": dict(ls="-", lw=1.5)}, ylim)
    draw(axes[1], df, nets, {"test_err": dict(ls="-", lw=1.5)}, ylim)
    axes[0].set_ylabel("training error (%)")
    axes[1].set_ylabel("test error (%)")
    a = Artefact("fig1", "Fig. 1 — plain-20 vs plain-56 on CIFAR-10", save(fig, out, "fig1"), missing=missing)
    a.caption = caption(missing, "Training error (left) and test error (right). Paper: the deeper plain net has "
                                  "higher training error, and thus test error.", scope)
    return a


def fig6(df: pd.DataFrame, out: Path, ylim=(0, 20), scope: str = "") -> Artefact:
    """Fig. 6: plain-20/32/44/56; ResNet-20/32/44/56/110; ResNet-110 vs 1202. Dashed train, bold test.
    The right panel's training errors end near 0 (1202: < 0.1%, §4.2), so its axis is logarithmic."""
    panels = [[(d, "none") for d in (20, 32, 44, 56)], [(d, "A") for d in (20, 32, 44, 56, 110)],
              [(110, "A"), (1202, "A")]]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4), constrained_layout=True)  # the log panel's label clears
    axes[1].sharey(axes[0])  # plain and residual nets on one scale, also when the axis is automatic
    missing = []
    for i, (ax, nets) in enumerate(zip(axes, panels)):
        log = i == 2
        lim = None if log and ylim is not None else ylim
        missing += [m for m in draw(ax, df, nets, TRAIN_TEST, lim, log=log) if m not in missing]
    a = Artefact("fig6", "Fig. 6 — training on CIFAR-10", save(fig, out, "fig6"), missing=missing)
    a.caption = caption(missing, "Dashed: training error; bold: test error. Left: plain nets; middle: ResNets; "
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
    a.caption = caption([], "Dashed: training error (mean over the mini-batches since the previous point); bold: "
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
    a.caption = caption(missing, "Thin: training error; bold: validation error of the centre crop.", scope)
    return a


FIG7_NETS = [(20, "none"), (56, "none"), (20, "A"), (56, "A"), (110, "A")]


FIG7_MEASURES = {  # responses.csv column -> (axis label, what the caption says is drawn)
    "std": ("std", "Responses are the outputs of each 3x3 layer after BN, before the nonlinearity and addition."),
    "branch_over_shortcut": ("branch std / shortcut std", "Drawn: per residual block, the std of its branch's "
                             "output over its shortcut's (on the row of the block's last layer; plain nets have "
                             "none)."),
    "gamma_abs_mean": ("mean |gamma|", "Drawn: the mean |gamma| of each 3x3 layer's BN."),
}


def fig7(resp: pd.DataFrame, out: Path, nets: list[Net] | None = None, scope: str = "",
         measure: str = "std") -> Artefact:
    """Fig. 7: std of layer responses on the test set, in layer order (top) and sorted (bottom); `measure`
    draws another responses.csv column instead (FIG7_MEASURES). `nets` defaults to the paper's (plain-20/56,
    ResNet-20/56/110)."""
    nets = nets or FIG7_NETS
    ylabel, what = FIG7_MEASURES[measure]
    fig, axes = plt.subplots(2, 1, figsize=(7, 6), constrained_layout=True)
    missing = []
    for net in nets:
        sub = net_rows(resp, net) if not resp.empty else resp
        if measure != "std" and not sub.empty:
            sub = sub.dropna(subset=[measure])
        if sub.empty:
            missing.append(display_name(*net))
            continue
        std = sub.groupby("layer")[measure].mean()
        kw = dict(color=net_color(net[0]), ls="--" if net[1] == "none" else "-", lw=1.2, label=display_name(*net))
        axes[0].plot(std.index, std.values, **kw)
        axes[1].plot(np.arange(1, len(std) + 1), np.sort(std.values)[::-1], **kw)
    axes[0].set_xlabel("layer index (original)")
    axes[1].set_xlabel("layer index (sorted by magnitude)")
    for ax in axes:
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    a = Artefact("fig7", "Fig. 7 — standard deviation of layer responses on CIFAR-10", save(fig, out, "fig7"),
                 missing=missing)
    a.caption = caption(missing, f"{what} Paper: ResNets' responses are smaller than plain nets', and deeper "
                                  "ResNets' smaller still.", scope)
    return a
















