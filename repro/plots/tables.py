"""The paper's tables (2, 3, 6) and the final-error table, from results/ rows (pandas only: no torch, no
matplotlib). Each is saved twice: a tidy numeric CSV for scripts and a formatted Markdown table for people.
One row per (net, protocol): runs of different protocols are never pooled; finished runs only."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from repro.names import display_name
from repro.results import final_rows, net_rows

# Paper values (paper.md; §4.1, §4.2). Test error in %.
PAPER_TABLE6 = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43, 1202: 7.93}
PAPER_TABLE6_MEAN = {110: (6.61, 0.16)}  # "best (mean ± std)" over 5 runs
PAPER_TABLE2 = {(18, "none"): 27.94, (18, "A"): 27.88, (34, "none"): 28.54, (34, "A"): 25.03}  # top-1, 10-crop
PAPER_TABLE1_GFLOPS = {18: 1.8, 34: 3.6, 50: 3.8, 101: 7.6, 152: 11.3}  # Table 1 (multiply-adds, 224x224)
PAPER_TABLE6_PARAMS_M = {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85, 110: 1.7, 1202: 19.4}  # Table 6
PAPER_TABLE3 = {(34, "none"): (28.54, 10.02), (34, "A"): (25.03, 7.76), (34, "B"): (24.52, 7.46),
                (34, "C"): (24.19, 7.40), (50, "B"): (22.85, 6.71), (101, "B"): (21.75, 6.05),
                (152, "B"): (21.43, 5.71)}


@dataclass
class Artefact:
    """What one figure or table function made: files, a caption, and the runs it could not find."""

    name: str
    title: str
    files: list[Path] = field(default_factory=list)
    caption: str = ""
    missing: list[str] = field(default_factory=list)
    table: pd.DataFrame | None = None


def caption(missing: list[str], base: str, scope: str = "") -> str:
    return base + (f" Missing runs (not drawn): {', '.join(missing)}." if missing else "") + \
        (f" {scope}" if scope else "")


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
    a.caption = caption(missing, "One row per net and protocol (runs of different protocols are never pooled). "
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
    a.caption = caption(missing, note, scope)
    return a


def table3(df: pd.DataFrame, finals: pd.DataFrame, out: Path, scope: str = "") -> Artefact:
    table = _imagenet_table(df, finals, PAPER_TABLE3, "imagenet")
    missing = _imagenet_missing(table, PAPER_TABLE3)
    shown = _imagenet_shown(table, top5=True)
    a = Artefact("table3", "Table 3 — ImageNet error (%), 10-crop, top-1 / top-5", save_table(table, out, "table3", shown),
                 missing=missing, table=shown)
    a.caption = caption(missing, "Ours: the final model of finished runs, one row per net and protocol.", scope)
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
                         "train_hours": runs.wall_time.astype(float).mean() / 3600,
                         "device": ", ".join(sorted(set(runs.device)))})  # a training time means nothing without it
    table = pd.DataFrame(rows, columns=["net", "protocol", "runs", "steps", "train_mean", "train_std", "test_mean",
                                        "test_std", "train_hours", "device"])
    pm = lambda m, s: _num(m) + ("" if pd.isna(s) else f" ± {s:.2f}")  # noqa: E731
    shown = pd.DataFrame({"net": table.net, "protocol": table.protocol, "runs": table.runs, "steps": table.steps,
                          "final train error (%)": [pm(m, s) for m, s in zip(table.train_mean, table.train_std)],
                          "final test error (%)": [pm(m, s) for m, s in zip(table.test_mean, table.test_std)],
                          "training time (h)": table.train_hours.map(lambda h: _num(h)), "device": table.device})
    a = Artefact("final_errors", "Final errors", save_table(table, out, "final_errors", shown), table=shown)
    a.caption = caption([], "Finished runs only. Training error: mean over the mini-batches of the last evaluation "
                             "interval. Test error: last evaluation.", scope)
    return a


def table1(arch: pd.DataFrame, out: Path) -> Artefact:
    """Table 1 (and Table 6's parameter column): every architecture's layers, parameters and multiply-adds, counted
    from our modules (`repro-diagnose --architectures`, results/architectures/), beside the paper's."""
    a = Artefact("table1", "Table 1 — the architectures, counted from our modules")
    if arch.empty:
        a.caption = "No architectures.csv (make diagnose writes results/architectures/architectures.csv)."
        return a
    rows = []
    for r in arch.itertuples():
        imagenet = r.family == "imagenet"
        paper_g = PAPER_TABLE1_GFLOPS.get(r.depth) if imagenet else None
        paper_p = None if imagenet else PAPER_TABLE6_PARAMS_M.get(r.depth)
        rows.append({"data": "ImageNet (224x224)" if imagenet else "CIFAR-10 (32x32)", "net": r.net,
                     "block": r.block, "blocks per stage": r.blocks_per_stage, "layers": r.weighted_layers,
                     "params (M)": round(r.params / 1e6, 2), "paper params (M)": paper_p,
                     "GFLOPs (mult-adds)": round(r.macs / 1e9, 3 if not imagenet else 2), "paper GFLOPs": paper_g})
    table = pd.DataFrame(rows)
    a.files, a.table = save_table(table, out, "table1"), table
    a.caption = ("Weighted layers (convs and fc on the main path; projections not counted, as in the paper's depth), "
                 "parameters and multiply-adds of one forward pass (the paper's 'FLOPs'), counted by forward hooks on "
                 "our modules. ImageNet nets: option A for 18/34 (= plain's counts), B for 50/101/152, as Table 3; "
                 "the paper's values from Table 1 (GFLOPs) and Table 6 (CIFAR parameters).")
    return a


PRETTY_DATA = {"imagenet": "ImageNet", "imagenette": "Imagenette"}


def suffix(data: str) -> str:
    return "" if data == "imagenet" else f"_{data}"
