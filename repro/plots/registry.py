"""The artefact registry: every figure and table the suite makes, by name, as a spec — which runs it reads
(the data, and the experiments under results/ it reads by default), how it is drawn, and what the drawing
function needs. Choosing the runs (`select`, `choose_protocol`), checking the inputs and `render` read the spec
alone; adding an artefact is one drawing function (figures.py or tables.py) and one entry in ARTEFACTS.
Torch-free, as the whole plotting package."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from repro.errors import ResultsError
from repro.plots.figures import degradation, fig1, fig4, fig6, fig7
from repro.plots.tables import Artefact, final_errors, table1, table2, table3, table6
from repro.plots.why import (
    convergence,
    diagnostics_summary,
    gradient_ratio,
    gradients,
    read_diagnostics,
    signal,
    step_size,
)
from repro.results import (
    distinct_runs,
    final_rows,
    last_rows,
    read_finals,
    read_responses,
    read_results,
    unfinished,
)


@dataclass(frozen=True)
class Inputs:
    """What an artefact is drawn from: its runs (one protocol for a figure; every protocol, or the one asked for,
    for a table), the caption's sentence on their scope, the data they are on, and the command's options."""

    runs: pd.DataFrame
    scope: str
    data: str
    ylim: object = "paper"  # "paper": the artefact's own axes; "auto"; or (low, high) in %
    measure: str = "std"  # Fig. 7: the responses.csv column drawn
    nets: tuple = ()  # Fig. 7: the nets drawn (empty: the paper's)
    folders: tuple = ()  # the experiment folders read (their diagnostics.csv, architectures.csv)

    def axes(self) -> dict:
        """The ylim keyword for a drawing function: none for the paper's axes (its default), else the one asked."""
        return {} if self.ylim == "paper" else {"ylim": None if self.ylim == "auto" else self.ylim}

    def finals(self) -> pd.DataFrame:
        """final.json of the runs (ImageNet's 10-crop evaluation)."""
        return read_finals(sorted(set(self.runs.path)) if not self.runs.empty else [])

    def diagnostics(self) -> pd.DataFrame:
        """diagnostics.csv of the experiment folders read and of their runs (repro-diagnose)."""
        return read_diagnostics(self.folders)

    def architectures(self) -> pd.DataFrame:
        files = [Path(f) / "architectures.csv" for f in self.folders]
        return pd.concat([pd.read_csv(f) for f in files if f.exists()] or [pd.DataFrame()], ignore_index=True)

    def responses(self) -> pd.DataFrame:
        """responses.csv of the finished runs (Fig. 7)."""
        if self.runs.empty:
            return read_responses([])
        resp = read_responses(sorted(set(self.runs.path)))
        return resp[resp.path.isin(set(final_rows(self.runs).path))] if not resp.empty else resp


@dataclass(frozen=True)
class Spec:
    """One artefact: `kind` 'figure' (drawn from one protocol of its runs) or 'table' (every protocol, one row per
    net and protocol), `draw(inputs, out)`, the `data` whose runs it reads ('cifar10', or ImageNet-family runs on
    'imagenet' or 'imagenette'), and the `experiments` under results/ it reads by default (the first that has a
    net wins for that net)."""

    kind: str
    draw: Callable[[Inputs, Path], Artefact]
    data: str
    experiments: tuple[str, ...] = ()
    runs: bool = True  # False: drawn from files of the experiment folders (diagnostics.csv, architectures.csv)


CIFAR_FIGURES = ("fig6_plain", "fig6_resnet", "fig6_1202", "table6")
IMAGENET_FIG4 = ("fig4", "table2", "fig4_imagenette")
WHY = ("fig6_plain", "fig6_resnet", "convergence")  # the experiments whose runs (and diagnostics) say why
ARTEFACTS: dict[str, Spec] = {
    "fig1": Spec("figure", lambda i, out: fig1(i.runs, out, scope=i.scope, **i.axes()), "cifar10",
                 ("fig1", "fig6_plain")),
    "fig6": Spec("figure", lambda i, out: fig6(i.runs, out, scope=i.scope, **i.axes()), "cifar10", CIFAR_FIGURES),
    "fig7": Spec("figure", lambda i, out: fig7(i.responses(), out, list(i.nets) or None, i.scope, i.measure),
                 "cifar10", ("fig6_plain", "fig6_resnet")),
    "table6": Spec("table", lambda i, out: table6(i.runs, out, i.scope), "cifar10",
                   ("table6", "fig6_resnet", "fig6_1202", "fig6_plain")),
    "fig4": Spec("figure", lambda i, out: fig4(i.runs, out, scope=i.scope, data=i.data, **i.axes()), "imagenet",
                 IMAGENET_FIG4),
    "table2": Spec("table", lambda i, out: table2(i.runs, i.finals(), out, i.scope, i.data), "imagenet",
                   ("table2", "fig4", "fig4_imagenette")),
    "table3": Spec("table", lambda i, out: table3(i.runs, i.finals(), out, i.scope), "imagenet",
                   ("table3", "imagenet_deep")),
    "fig4_imagenette": Spec("figure", lambda i, out: fig4(i.runs, out, scope=i.scope, data=i.data, **i.axes()),
                            "imagenette", IMAGENET_FIG4),
    "table2_imagenette": Spec("table", lambda i, out: table2(i.runs, i.finals(), out, i.scope, i.data), "imagenette",
                              ("table2", "fig4", "fig4_imagenette")),
    # why plain nets degrade (repro.plots.why): diagnostics.csv beside the runs, and the runs' curves
    "gradients": Spec("figure", lambda i, out: gradients(i.diagnostics(), out), "cifar10", WHY, runs=False),
    "signal": Spec("figure", lambda i, out: signal(i.diagnostics(), out), "cifar10", WHY, runs=False),
    "gradient_ratio": Spec("figure", lambda i, out: gradient_ratio(i.diagnostics(), out), "cifar10", WHY,
                           runs=False),
    "step_size": Spec("figure", lambda i, out: step_size(i.diagnostics(), out), "cifar10", WHY, runs=False),
    "diagnostics_summary": Spec("table", lambda i, out: diagnostics_summary(i.diagnostics(), out), "cifar10", WHY,
                                runs=False),
    "convergence": Spec("figure", lambda i, out: convergence(i.runs, out, i.scope), "cifar10", WHY),
    "table1": Spec("table", lambda i, out: table1(i.architectures(), out), "cifar10", ("architectures",), runs=False),
    # the demo report's (any sweep's depths; its experiment is the one given)
    "degradation": Spec("figure", lambda i, out: degradation(i.runs, out, scope=i.scope, **i.axes()), "cifar10"),
    "final_errors": Spec("table", lambda i, out: final_errors(i.runs, out, i.scope), "cifar10"),
}
# the full report's, in its order; `repro-plots NAME` takes any of ARTEFACTS
PAPER_ARTEFACTS = ("fig1", "fig6", "fig7", "table6", "fig4", "table2", "table3", "fig4_imagenette",
                   "table2_imagenette", "table1", "convergence", "gradients", "gradient_ratio",
                   "step_size", "signal", "diagnostics_summary")


def runs_of(df: pd.DataFrame, kind: str) -> pd.DataFrame:
    """The rows of one artefact's data (Spec.data): CIFAR-family runs, or ImageNet-family runs on ImageNet /
    Imagenette."""
    if df.empty:
        return df
    return df[df.family == "cifar10"] if kind == "cifar10" else df[(df.family == "imagenet") & (df.data == kind)]


def select(results: Path, name: str, explicit: list[Path] | None) -> pd.DataFrame:
    """The runs an artefact may draw: those under `explicit` folders, else under its default experiments,
    each computation once (a run found in several folders with the same protocol, net and seed: the
    finished one, else the first)."""
    folders = explicit or [results / e for e in ARTEFACTS[name].experiments if (results / e).exists()]
    return distinct_runs(read_results(folders))


def check_inputs(results: Path, names: list[str], explicit: list[Path] | None, protocol: str | None) -> None:
    """Before anything is written: there are runs to draw, and `protocol` (if given) is one of theirs. (Artefacts
    drawn from files, not runs — table1, gradients, gradient_ratio, step_size, signal, diagnostics_summary — say in
    their caption when the files are missing.)"""
    if names and not any(ARTEFACTS[n].runs for n in names):
        return
    sets = [select(results, n, explicit) for n in names] if names else [distinct_runs(read_results(explicit or []))]
    frames = [f for f in sets if not f.empty]
    if not frames:
        where = ", ".join(map(str, explicit)) if explicit else \
            f"{results}/{{{','.join(sorted({e for n in names for e in ARTEFACTS[n].experiments}))}}}"
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
           protocol: str | None = None, fig7_measure: str = "std") -> Artefact:
    """Render one artefact by name (ARTEFACTS): a figure from one protocol of its runs (`protocol`, else
    choose_protocol's default), a table from every protocol (or `protocol`); from its data's runs only."""
    spec = ARTEFACTS[name]
    folders = tuple(explicit or [results / e for e in spec.experiments if (results / e).exists()])
    if not spec.runs:
        return spec.draw(Inputs(pd.DataFrame(), "", spec.data, ylim, folders=folders), out)
    family = runs_of(select(results, name, explicit), spec.data)
    if spec.kind == "table":  # every protocol, one row per (net, protocol); or the one asked for
        chosen = family if protocol is None else choose_protocol(family, protocol)[0]
        todo = unfinished(chosen) if not chosen.empty else []
        scope = ("Unfinished runs (not tabulated): " + "; ".join(todo) + ".") if todo else ""
    else:
        chosen, scope = choose_protocol(family, protocol)
    return spec.draw(Inputs(chosen, scope, spec.data, ylim, fig7_measure, folders=folders), out)
