"""The reproduction report: every artefact, the paper's values beside ours, the scale of the runs, and
computed verdicts on the paper's claims — as plots/report.md and a self-contained plots/report.html."""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import pandas as pd

from .names import display_name
from .plots import (ARTEFACTS, SOURCES, Artefact, degradation, final_errors, final_rows, fig7, markdown_table,
                    render, select)
from .results import read_responses, read_results


@dataclass
class Verdict:
    claim: str
    holds: bool | None  # None: not enough runs to decide
    evidence: str

    @property
    def word(self) -> str:
        return {True: "HOLDS", False: "DOES NOT HOLD", None: "NOT DECIDED"}[self.holds]


def _by_net(final: pd.DataFrame) -> pd.DataFrame:
    """Per net: mean and std over seeds of the final training and test error."""
    g = final.groupby(["depth", "shortcut"])
    return pd.DataFrame({"train": g.train_err.mean(), "train_std": g.train_err.std(), "test": g.test_err.mean(),
                         "seeds": g.seed.nunique()})


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _noise(stats: pd.DataFrame) -> str:
    stds = stats.train_std.dropna()
    return f"; seed-to-seed std of final training error up to {_pct(stds.max())}" if len(stds) else \
        "; one seed per net, so no seed-to-seed spread is measured"


def _fraction_above(df: pd.DataFrame, deep: tuple, shallow: tuple) -> float:
    """Share of the evaluation points (common to both) where `deep` has the higher training error."""
    curve = lambda net: df[(df.depth == net[0]) & (df.shortcut == net[1])].groupby("step").train_err.mean()  # noqa: E731
    a, b = curve(deep), curve(shallow)
    common = a.index.intersection(b.index)
    return float((a[common] > b[common]).mean()) if len(common) else float("nan")


def verdicts(df: pd.DataFrame) -> list[Verdict]:
    """The paper's three claims, decided on final training error (the last row of each run, mean over
    seeds), with the numbers they were decided on."""
    if df.empty:
        return []
    final = final_rows(df)
    stats = _by_net(final)
    plain = sorted(d for d, s in stats.index if s == "none")
    res = {}
    for d, s in stats.index:
        if s != "none":
            res.setdefault(d, (d, s))
    out = []
    # (1) deeper plain nets have higher training error, at the end and over most of training.
    pairs = list(combinations(plain, 2))
    if pairs:
        parts, ok = [], True
        for a, b in pairs:
            ea, eb = stats.loc[(a, "none"), "train"], stats.loc[(b, "none"), "train"]
            frac = _fraction_above(df, (b, "none"), (a, "none"))
            ok &= bool(eb > ea and frac > 0.5)
            parts.append(f"plain-{b} {_pct(eb)} vs plain-{a} {_pct(ea)} (margin {100 * (eb - ea):+.2f} points; "
                         f"higher at {100 * frac:.0f}% of evaluation points)")
        out.append(Verdict("Deeper plain nets have higher training error than shallower ones (degradation).", ok,
                           "; ".join(parts) + _noise(stats)))
    else:
        out.append(Verdict("Deeper plain nets have higher training error than shallower ones (degradation).", None,
                           "needs two plain depths"))
    # (2) residual nets have lower training error than plain nets of the same depth.
    same = [d for d in plain if d in res]
    if same:
        parts = [f"{display_name(*res[d])} {_pct(stats.loc[res[d], 'train'])} vs plain-{d} "
                 f"{_pct(stats.loc[(d, 'none'), 'train'])}" for d in same]
        ok = all(stats.loc[res[d], "train"] < stats.loc[(d, "none"), "train"] for d in same)
        out.append(Verdict("Residual nets have lower training error than plain nets of the same depth.", ok,
                           "; ".join(parts)))
    else:
        out.append(Verdict("Residual nets have lower training error than plain nets of the same depth.", None,
                           "needs a plain and a residual net of one depth"))
    # (3) deeper residual nets are no worse than shallower ones.
    rpairs = list(combinations(sorted(res), 2))
    if rpairs:
        parts, ok = [], True
        for a, b in rpairs:
            sa, sb = stats.loc[res[a]], stats.loc[res[b]]
            ok &= bool(sb.train <= sa.train)
            parts.append(f"{display_name(*res[b])} train {_pct(sb.train)} / test {_pct(sb.test)} vs "
                         f"{display_name(*res[a])} train {_pct(sa.train)} / test {_pct(sa.test)}")
        out.append(Verdict("Deeper residual nets are no worse (training error) than shallower ones.", ok,
                           "; ".join(parts)))
    else:
        out.append(Verdict("Deeper residual nets are no worse (training error) than shallower ones.", None,
                           "needs two residual depths"))
    return out


def scale_table(df: pd.DataFrame) -> pd.DataFrame:
    """What the runs were: per experiment, the nets, iterations, data, seeds, device, scale and status."""
    rows = []
    for exp, sub in df.groupby("exp"):
        last = final_rows(sub)
        rows.append({
            "experiment": exp,
            "nets": ", ".join(display_name(d, s) for d, s in sorted(set(zip(sub.depth, sub.shortcut)))),
            "iterations": (f"{int(last.step.max())}" if last.step.min() == last.step.max() else
                           f"{int(last.step.min())}–{int(last.step.max())}") + f" of {int(sub.total_steps.max())}",
            "data": ", ".join(sorted(set(sub.data))),
            "seeds": sub.seed.nunique(),
            "device": ", ".join(sorted(set(sub.device))),
            "scale": "; ".join(sorted(set(sub.scale))),
            "status": ", ".join(f"{n} {k}" for k, n in last.status.value_counts().items()),
        })
    return pd.DataFrame(rows)


class Doc:
    """A tiny document model rendered to both Markdown and HTML (figures embedded in the HTML)."""

    def __init__(self):
        self.blocks: list[tuple[str, object]] = []

    def h(self, level: int, text: str):
        self.blocks.append(("h", (level, text)))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def table(self, df: pd.DataFrame):
        self.blocks.append(("table", df))

    def image(self, path: Path, alt: str):
        self.blocks.append(("img", (path, alt)))

    def markdown(self, base: Path) -> str:
        out = []
        for kind, x in self.blocks:
            if kind == "h":
                out.append("#" * x[0] + " " + x[1])
            elif kind == "p":
                out.append(x)
            elif kind == "table":
                out.append(markdown_table(x) if len(x) else "_(no runs)_")
            else:
                out.append(f"![{x[1]}]({x[0].relative_to(base).as_posix()})")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
               "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
               "table{border-collapse:collapse;font-size:90%}td,th{border:1px solid #ccc;padding:3px 8px}"
               "img{max-width:100%}.holds{color:#070}.fails{color:#a00}</style></head><body>"]
        for kind, x in self.blocks:
            if kind == "h":
                out.append(f"<h{x[0]}>{html.escape(x[1])}</h{x[0]}>")
            elif kind == "p":
                text = html.escape(x).replace("**", "")
                out.append(f"<p>{text}</p>")
            elif kind == "table":
                out.append(x.to_html(index=False, escape=True, na_rep="") if len(x) else "<p><i>(no runs)</i></p>")
            else:
                data = base64.b64encode(x[0].read_bytes()).decode()
                out.append(f"<img alt='{html.escape(x[1])}' src='data:image/png;base64,{data}'>")
        return "\n".join(out + ["</body></html>"]) + "\n"


def _add_artefact(doc: Doc, art: Artefact) -> None:
    doc.h(2, art.title)
    png = [f for f in art.files if f.suffix == ".png"]
    if png:
        doc.image(png[0], art.title)
    if art.table is not None:
        doc.table(art.table)
    doc.p(art.caption)


def _add_verdicts(doc: Doc, df: pd.DataFrame, heading: str) -> list[Verdict]:
    vs = verdicts(df)
    doc.h(2, heading)
    if not vs:
        doc.p("No runs to decide on.")
    for i, v in enumerate(vs, 1):
        doc.p(f"**({i}) {v.claim} — {v.word}.** {v.evidence}.")
    return vs


def write_report(root: Path, out: Path, explicit: list[Path] | None, ylim="paper", demo: bool = False) -> list[Path]:
    """Render every artefact (or the demo's) and write report.md and report.html into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    doc = Doc()
    if demo:
        df = read_results(explicit or [root])
        title = "The degradation problem — scaled-down demo"
        doc.h(1, title)
        doc.p("A scaled-down version of the paper's CIFAR-10 protocol (§4.2), sized for 2 CPU cores; it is not "
              "the paper's full protocol, and its numbers are not comparable to the paper's tables.")
        doc.h(2, "Scale of the runs")
        doc.table(scale_table(df))
        doc.p("Data: " + "; ".join(sorted(set(df.data_source))) + ".")
        _add_artefact(doc, degradation(df, out, None if ylim in ("auto", "paper") else ylim))
        _add_artefact(doc, final_errors(df, out))
        nets = sorted(set(zip(df.depth, df.shortcut)), key=lambda n: (n[1] != "none", n[0]))
        _add_artefact(doc, fig7(read_responses(explicit or [root]), out, nets))
        vs = _add_verdicts(doc, df, "Verdicts on the paper's claims")
    else:
        title = "Reproduction report — He et al. 2015, the degradation problem"
        doc.h(1, title)
        arts = [render(name, root, out, explicit, ylim) for name in ARTEFACTS]
        cifar = select(root, "fig6", explicit)
        imagenet = select(root, "fig4", explicit)
        everything = pd.concat([d for d in (cifar, imagenet) if not d.empty], ignore_index=True) \
            if not (cifar.empty and imagenet.empty) else cifar
        doc.h(2, "Scale of the runs")
        doc.table(scale_table(everything) if not everything.empty else pd.DataFrame())
        doc.p("Full protocol = the paper's iterations, batch, width and data (§4.1, §4.2); anything else is "
              "marked as scaled down. Experiments read by default: "
              + "; ".join(f"{k}: {', '.join(v)}" for k, v in SOURCES.items()) + ".")
        for art in arts:
            _add_artefact(doc, art)
        vs = _add_verdicts(doc, cifar[cifar.family == "cifar10"] if not cifar.empty else cifar,
                           "Verdicts on the paper's claims (CIFAR-10)")
        vs += _add_verdicts(doc, imagenet, "Verdicts on the paper's claims (ImageNet)")
    md, page = out / "report.md", out / "report.html"
    md.write_text(doc.markdown(out))
    page.write_text(doc.html(title))
    for i, v in enumerate(vs, 1):
        print(f"verdict ({i}) {v.word}: {v.claim} {v.evidence}")
    return sorted(p for p in out.iterdir() if p.suffix in (".png", ".pdf", ".md", ".csv", ".html"))
