"""The reproduction report: every artefact, the paper's values beside ours, the scale of the runs, and
computed verdicts on the paper's claims — as plots/report.md and a self-contained plots/report.html."""
from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from .names import display_name
from .plots import (ARTEFACTS, SOURCES, check_inputs, choose_protocol, data_kind, degradation, fig7, render, runs_of,
                    select)
from .results import distinct_runs, final_rows, last_rows, read_responses, read_results
from .tables import Artefact, final_errors, markdown_table, protocol_order
from .verdicts import NOISE_FLOOR, Z, Verdict, verdict_table, verdicts


def scale_table(df: pd.DataFrame) -> pd.DataFrame:
    """What the runs were: per experiment and protocol, the nets, iterations, data, seeds, device, the
    protocol's deviations from the paper and how the runs ended."""
    rows = []
    for (exp, _), sub in df.groupby(["exp", "protocol_key"], sort=True):
        last = last_rows(sub)
        rows.append({
            "experiment": exp,
            "protocol": sub.protocol.iloc[0],
            "nets": ", ".join(display_name(d, s) for d, s in sorted(set(zip(sub.depth, sub.shortcut)))),
            "iterations": (f"{int(last.step.max())}" if last.step.min() == last.step.max() else
                           f"{int(last.step.min())}–{int(last.step.max())}") + f" of {int(sub.total_steps.max())}",
            "data": ", ".join(sorted(set(sub.data))),
            "seeds": sub.seed.nunique(),
            "device": ", ".join(sorted(set(sub.device))),
            "differences from the paper": sub.scale.iloc[0],
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


def _add_verdicts(doc: Doc, df: pd.DataFrame, family: str, heading: str, floor: float,
                  protocol: str | None = None) -> list[Verdict]:
    """The four claims for every protocol of `df` (fewest deviations from the paper first), or for `protocol`;
    all 'not measured' when there are no runs."""
    doc.h(2, heading)
    vs = []
    for key in protocol_order(df) if not df.empty else []:
        runs = df[df.protocol_key == key]
        if protocol in (None, runs.protocol.iloc[0]):
            vs += verdicts(runs, family, runs.protocol.iloc[0], floor)
    vs = vs or verdicts(df.iloc[0:0], family, protocol or "—", floor)
    doc.p(f"Each claim is decided on the final training error of finished runs of one protocol: it holds when "
          f"the margin (in the paper's direction) exceeds {Z:g} standard errors, does not hold when it is beyond "
          f"{Z:g} standard errors the other way, and is inconclusive in between. The standard error comes from the "
          f"seed-to-seed spread where a net has several seeds, else from a noise floor of {floor:g} points per "
          f"net (`--noise-floor`).")
    for protocol_name in dict.fromkeys(v.protocol for v in vs):
        if len({v.protocol for v in vs}) > 1 or protocol_name != "—":
            doc.p(f"Protocol: **{protocol_name}**")
        for v in (v for v in vs if v.protocol == protocol_name):
            others = f" Other pairs: {'; '.join(v.others)}." if v.others else ""
            doc.p(f"**{v.claim} — {v.verdict.upper()}.** {v.text} {v.evidence}.{others}")
    return vs


def write_report(root: Path, out: Path, explicit: list[Path] | None, ylim="paper", demo: bool = False,
                 protocol: str | None = None, floor: float = NOISE_FLOOR) -> list[Path]:
    """Render every artefact (or the demo's), write report.md, report.html and verdicts.csv into `out`."""
    doc = Doc()
    if demo:
        check_inputs(root, [], explicit or [root], protocol)
        df = distinct_runs(read_results(explicit or [root]))
        title = "The degradation problem — scaled-down demo"
        doc.h(1, title)
        doc.p("A scaled-down version of the paper's CIFAR-10 protocol (§4.2), sized for 2 CPU cores; it is not "
              "the paper's full protocol, and its numbers are not comparable to the paper's tables.")
        doc.h(2, "Scale of the runs")
        doc.table(scale_table(df))
        doc.p("Data: " + "; ".join(sorted(set(df.data_source))) + ".")
        chosen, scope = choose_protocol(df, protocol)
        _add_artefact(doc, degradation(chosen, out, None if ylim in ("auto", "paper") else ylim, scope))
        _add_artefact(doc, final_errors(chosen, out, scope))
        nets = sorted(set(zip(chosen.depth, chosen.shortcut)), key=lambda n: (n[1] != "none", n[0]))
        resp = read_responses(sorted(set(final_rows(chosen).path)))
        _add_artefact(doc, fig7(resp, out, nets, scope))
        vs = _add_verdicts(doc, chosen, "cifar10", "Verdicts on the paper's claims", floor)
    else:
        check_inputs(root, list(ARTEFACTS), explicit, protocol)
        title = "Reproduction report — He et al. 2015, the degradation problem"
        doc.h(1, title)
        cifar, nets = runs_of(select(root, "fig6", explicit), "cifar10"), select(root, "fig4", explicit)
        imagenet, imagenette = runs_of(nets, "imagenet"), runs_of(nets, "imagenette")
        have = {"cifar10": not cifar.empty, "imagenet": not imagenet.empty, "imagenette": not imagenette.empty}
        arts = [render(name, root, out, explicit, ylim, protocol) for name in ARTEFACTS if have[data_kind(name)]]
        if have["cifar10"]:
            arts.append(final_errors(cifar if protocol is None else cifar[cifar.protocol == protocol], out))
        skipped = [name for name in ARTEFACTS if not have[data_kind(name)]]
        everything = pd.concat([d for d in (cifar, nets) if not d.empty], ignore_index=True) \
            if not (cifar.empty and nets.empty) else cifar
        doc.h(2, "Scale of the runs")
        doc.table(scale_table(everything))
        doc.p("Protocol = every setting that can change a run's numbers (data and which copy of its files, sizes, "
              "width, every optimiser key, the BN batch (splits x data-parallel processes), bf16 or fp32 "
              "arithmetic, evaluation interval); 'paper' when none differs from §4.2 / §3.4. Runs of different "
              "protocols are never pooled. Experiments read by default: "
              + "; ".join(f"{k}: {', '.join(v)}" for k, v in SOURCES.items()) + ".")
        for art in arts:
            _add_artefact(doc, art)
        if skipped:
            doc.p(f"Not drawn, for want of runs on their data: {', '.join(skipped)} (ImageNet artefacts read ImageNet "
                  f"runs only; the *_imagenette ones Imagenette runs only).")
        vs = _add_verdicts(doc, cifar, "cifar10", "Verdicts on the paper's claims (CIFAR-10)", floor, protocol)
        vs += _add_verdicts(doc, imagenet, "imagenet", "Verdicts on the paper's claims (ImageNet)", floor)
        if not imagenette.empty:
            vs += _add_verdicts(doc, imagenette, "imagenette",
                                "The same claims on Imagenette (not ImageNet: separate from the paper's)", floor)
    out.mkdir(parents=True, exist_ok=True)
    md, page = out / "report.md", out / "report.html"
    md.write_text(doc.markdown(out))
    page.write_text(doc.html(title))
    verdict_table(vs).to_csv(out / "verdicts.csv", index=False)
    for v in vs:
        print(f"verdict [{v.family}, {v.protocol}] {v.claim}: {v.verdict.upper()} — {v.evidence}")
    return sorted(p for p in out.iterdir() if p.suffix in (".png", ".pdf", ".md", ".csv", ".html"))
