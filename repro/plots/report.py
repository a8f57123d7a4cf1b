"""The reproduction report: every artefact, the paper's values beside ours, the scale of the runs, and
computed verdicts on the paper's claims — as plots/report.md and a self-contained plots/report.html."""
from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from repro.errors import ResultsError
from repro.names import display_name
from repro.plots.registry import (
    ARTEFACTS,
    PAPER_ARTEFACTS,
    Inputs,
    check_inputs,
    choose_protocol,
    render,
    runs_of,
    select,
)
from repro.plots.tables import Artefact, final_errors, markdown_table, protocol_order
from repro.plots.verdicts import NOISE_FLOOR, Verdict, Z, demo_floor, verdict_table, verdicts
from repro.plots.why import CLAIMS as WHY_CLAIMS
from repro.plots.why import EXPLODE, HELD_BACK, LEVEL, VANISH, files_in, read_diagnostics, why_verdicts
from repro.results import METRICS, distinct_runs, last_rows, read_results


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

    def title(self) -> str:
        """The first heading's text (the page title)."""
        return next((x[1] for kind, x in self.blocks if kind == "h"), "report")

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
                  protocol: str | None = None, floor_source: str = "`--noise-floor`") -> list[Verdict]:
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
          f"net ({floor_source}).")
    for protocol_name in dict.fromkeys(v.protocol for v in vs):
        if len({v.protocol for v in vs}) > 1 or protocol_name != "—":
            doc.p(f"Protocol: **{protocol_name}**")
        for v in (v for v in vs if v.protocol == protocol_name):
            others = f" Other pairs: {'; '.join(v.others)}." if v.others else ""
            doc.p(f"**{v.claim} — {v.verdict.upper()}.** {v.text} {v.evidence}.{others}")
    return vs


DEMO_ARTEFACTS = ("degradation", "final_errors", "fig7", "gradients")  # the demo report's, from its one sweep
DEMO_EXPERIMENT = "demo-"  # the demo's experiments are named demo-<data> (experiments/exp/demo.yaml's exp_name)


def demo_report(doc: Doc, root: Path, out: Path, folders: list[Path], ylim, protocol: str | None,
                floor: float | None) -> list[Verdict]:
    """The demo's report (a sweep of any depths, e.g. exp=demo): the scale, DEMO_ARTEFACTS from one protocol of
    its runs, and the verdicts."""
    check_inputs(root, [], folders, protocol)
    df = distinct_runs(read_results(folders))
    doc.h(1, "The degradation problem — scaled-down demo")
    doc.p("A scaled-down version of the paper's CIFAR-10 protocol (§4.2), sized for 2 CPU cores; it is not "
          "the paper's full protocol, and its numbers are not comparable to the paper's tables.")
    doc.h(2, "Scale of the runs")
    doc.table(scale_table(df))
    doc.p("Data: " + "; ".join(sorted(set(df.data_source))) + ".")
    chosen, scope = choose_protocol(df, protocol)  # one protocol for every artefact of the demo
    nets = tuple(sorted(set(zip(chosen.depth, chosen.shortcut)), key=lambda n: (n[1] != "none", n[0])))
    for name in DEMO_ARTEFACTS:
        spec = ARTEFACTS[name]
        inputs = Inputs(chosen, scope, spec.data, ylim, nets=nets, folders=tuple(folders))
        if spec.runs or not inputs.diagnostics().empty:
            _add_artefact(doc, spec.draw(inputs, out))
    data = chosen.data.iloc[0] if len(chosen) else ""
    measured, source = demo_floor(data)
    if floor is not None:
        measured, source = floor, "`--noise-floor`"
    return _add_verdicts(doc, chosen, "cifar10", "Verdicts on the paper's claims", measured, floor_source=source)


def paper_report(doc: Doc, root: Path, out: Path, folders: list[Path] | None, ylim, protocol: str | None,
                 floor: float) -> list[Verdict]:
    """The reproduction report: every PAPER_ARTEFACTS entry that has runs on its data, the final errors, the scale,
    and the verdicts per data set."""
    check_inputs(root, list(PAPER_ARTEFACTS), folders, protocol)
    doc.h(1, "Reproduction report — He et al. 2015, the degradation problem")
    cifar, nets = runs_of(select(root, "fig6", folders), "cifar10"), select(root, "fig4", folders)
    imagenet, imagenette = runs_of(nets, "imagenet"), runs_of(nets, "imagenette")
    have = {"cifar10": not cifar.empty, "imagenet": not imagenet.empty, "imagenette": not imagenette.empty}
    def has_files(name: str) -> bool:  # an artefact drawn from files (Spec.runs False): are they there?
        where = folders or [root / e for e in ARTEFACTS[name].experiments]
        return any(files_in(where, n) for n in ("architectures.csv", "diagnostics.csv"))

    drawn = [name for name in PAPER_ARTEFACTS if have[ARTEFACTS[name].data] and (ARTEFACTS[name].runs or has_files(name))]
    arts = [render(name, root, out, folders, ylim, protocol) for name in drawn]
    if have["cifar10"]:
        arts.append(final_errors(cifar if protocol is None else cifar[cifar.protocol == protocol], out))
    skipped = [name for name in PAPER_ARTEFACTS if name not in drawn]
    everything = pd.concat([d for d in (cifar, nets) if not d.empty], ignore_index=True) \
        if not (cifar.empty and nets.empty) else cifar
    doc.h(2, "Scale of the runs")
    doc.table(scale_table(everything))
    doc.p("Protocol = every setting that can change a run's numbers (data and which copy of its files, sizes, "
          "width, every optimiser key, the BN batch (splits x data-parallel processes), bf16 or fp32 "
          "arithmetic, evaluation interval); 'paper' when none differs from §4.2 / §3.4. Runs of different "
          "protocols are never pooled. Experiments read by default: "
          + "; ".join(f"{k}: {', '.join(ARTEFACTS[k].experiments)}" for k in PAPER_ARTEFACTS) + ".")
    for art in arts:
        _add_artefact(doc, art)
    if skipped:
        doc.p(f"Not drawn, for want of runs on their data or of their files: {', '.join(skipped)} (ImageNet "
              f"artefacts read ImageNet runs only; the *_imagenette ones Imagenette runs only; gradients, "
              f"gradient_ratio, step_size, signal and diagnostics_summary read diagnostics.csv and table1 "
              f"architectures.csv: make diagnose).")
    vs = _add_verdicts(doc, cifar, "cifar10", "Verdicts on the paper's claims (CIFAR-10)", floor, protocol)
    vs += _add_verdicts(doc, imagenet, "imagenet", "Verdicts on the paper's claims (ImageNet)", floor)
    if not imagenette.empty:
        vs += _add_verdicts(doc, imagenette, "imagenette",
                            "The same claims on Imagenette (not ImageNet: separate from the paper's)", floor)
    if have["cifar10"]:
        why_folders = folders or [root / e for e in ARTEFACTS["gradients"].experiments if (root / e).exists()]
        vs += add_why(doc, read_diagnostics(why_folders), cifar)
    return vs


def add_why(doc: Doc, diag: pd.DataFrame, runs: pd.DataFrame) -> list:
    """The section 'Is it vanishing gradients?': what was measured and the four verdicts of repro.plots.why."""
    doc.h(2, "Is it vanishing gradients?")
    doc.p("§4.1 says the degradation is 'unlikely to be caused by vanishing gradients' (BN keeps the forward "
          "signals' variances non-zero, the backward gradients have 'healthy norms') and conjectures that deep plain "
          "nets 'may have exponentially low convergence rates'. Measured here: the gradient norm layer by layer and "
          "the forward signal (figures gradients, gradient_ratio, step_size and signal, from diagnostics.csv: "
          "repro-diagnose), "
          "and the iterations each run needs to reach a training-error level (figure convergence, from the runs' "
          "curves). "
          f"Thresholds fixed before measuring (repro/plots/why.py): vanishing = input-side gradient < {VANISH:g} x the "
          f"output side's; exploding at initialisation = > {EXPLODE:g} x; exponential convergence = the exponential "
          f"fit of steps to {LEVEL:.0%} against depth beats the power law and predicts the deepest plain net held "
          f"back within {HELD_BACK:g}x.")
    vs = why_verdicts(diag, runs)
    for v in vs:
        doc.p(f"**{v.claim} — {v.verdict.upper()}.** {WHY_CLAIMS[v.claim]} {v.evidence}.")
    return vs


REPORTS = {"paper": paper_report, "demo": demo_report}


def write_report(root: Path, out: Path, explicit: list[Path] | None, ylim="paper", demo: bool = False,
                 protocol: str | None = None, floor: float | None = None) -> list[Path]:
    """One document (the demo's, or the paper's: REPORTS), its artefacts, report.md, report.html and verdicts.csv
    in `out`. `floor`: the noise floor of a one-seed net (None: the demo's measured one, else NOISE_FLOOR)."""
    if floor is None and not demo:
        floor = NOISE_FLOOR
    doc = Doc()
    build = REPORTS["demo" if demo else "paper"]
    vs = build(doc, root, out, (explicit or [root]) if demo else explicit, ylim, protocol, floor)
    out.mkdir(parents=True, exist_ok=True)
    md, page = out / "report.md", out / "report.html"
    md.write_text(doc.markdown(out))
    page.write_text(doc.html(doc.title()))
    verdict_table(vs).to_csv(out / "verdicts.csv", index=False)
    for v in vs:
        print(f"verdict [{v.family}, {v.protocol}] {v.claim}: {v.verdict.upper()} — {v.evidence}")
    return sorted(p for p in out.iterdir() if p.suffix in (".png", ".pdf", ".md", ".csv", ".html"))


def experiments_under(root: Path) -> list[Path]:
    """Every folder under `root` (one or two levels down) that holds run folders: each a report of its own."""
    def holds_runs(d: Path) -> bool:
        return any((r / METRICS).exists() for r in d.iterdir() if r.is_dir())

    found = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        found += [d] if holds_runs(d) else [s for s in sorted(d.iterdir()) if s.is_dir() and holds_runs(s)]
    return found


def write_every_report(root: Path, out: Path, ylim="paper", protocol: str | None = None,
                       floor: float | None = None) -> list[Path]:
    """`make report` on a results tree: the paper's report from its default experiments (into `out`) where they
    have runs, and a report of every other experiment present (into out/<experiment>/: the demo's for demo-*,
    else the paper's from that experiment's runs); says which artefacts have no runs."""
    defaults = {e for name in PAPER_ARTEFACTS for e in ARTEFACTS[name].experiments}
    paths: list[Path] = []
    if {f.relative_to(root).parts[0] for f in experiments_under(root)} & defaults:
        paths += write_report(root, out, None, ylim, protocol=protocol, floor=NOISE_FLOOR if floor is None else floor)
    elif (root / "architectures" / "architectures.csv").exists():  # Table 1 needs no runs
        paths += render("table1", root, out).files
    for folder in experiments_under(root):
        exp = folder.relative_to(root)
        if exp.parts[0] in defaults:
            continue
        paths += write_report(root, out / exp, [folder], ylim, demo=folder.name.startswith(DEMO_EXPERIMENT),
                              protocol=protocol, floor=floor)
    absent = [n for n in PAPER_ARTEFACTS if not any((root / e).is_dir() for e in ARTEFACTS[n].experiments)]
    if absent:
        print("absent (no runs under their experiments): " + "; ".join(
            f"{n} ({', '.join(ARTEFACTS[n].experiments)})" for n in absent))
    if not paths:
        raise ResultsError(f"no runs under {root}; train some first (README 'Reproducing each figure') or point "
                           f"--results at run or experiment folders")
    return paths
