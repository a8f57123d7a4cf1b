"""The command line of the figures, tables and report (`python -m repro.plots ...`, which calls this).

    python -m repro.plots fig6              # one artefact, from the default experiments under results/
    python -m repro.plots all               # every artefact + plots/report.md, report.html, verdicts.csv; and
                                            # every other experiment under results/ into plots/<experiment>/
    python -m repro.plots all --results results/my_sweep --out plots/my_sweep
    python -m repro.plots fig6 --protocol "8000 it, JPEG-derived copy, bf16, eval every 250"
    python -m repro.plots gaps --results RUN_A RUN_B

Each figure is saved as PNG and PDF, each table as Markdown and CSV. A figure draws one protocol (default:
the one with the most nets, of those the closest to the paper's) and its caption names what it left out;
runs that are missing or unfinished are listed in the caption, never silently skipped or counted.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from repro.errors import ResultsError, command
from repro.plots.registry import ARTEFACTS, check_inputs, render
from repro.plots.report import write_every_report, write_report
from repro.plots.verdicts import NOISE_FLOOR
from repro.results import METRICS, curve_gaps, read_metrics


@command  # Ctrl-C, a full disk, a read-only folder: one line
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
    p.add_argument("--protocol", default=None,
                   help="draw (and tabulate) only runs of this protocol label (default: figures draw the one "
                        "with the most nets, of those the closest to the paper's; tables show every protocol)")
    p.add_argument("--fig7-measure", default="std", choices=["std", "branch_over_shortcut", "gamma_abs_mean"],
                   help="fig7: the responses.csv column drawn (default std, the paper's; the caption says which)")
    p.add_argument("--noise-floor", type=float, default=None,
                   help=f"verdicts: seed-to-seed std (points) assumed for a net with one seed (default {NOISE_FLOOR}; "
                        f"the demo's report: the spread measured over its seeds on the same data, docs/demo.md)")
    args = p.parse_args(argv)
    try:
        ylim = args.ylim if args.ylim in ("paper", "auto") else tuple(float(v) for v in args.ylim.split(","))
    except ValueError:
        print(f"error: --ylim {args.ylim!r}: use paper, auto or LOW,HIGH (e.g. 0,20)", file=sys.stderr)
        return 2
    if args.what == "gaps":
        if len(args.results or []) != 2:
            raise ResultsError("gaps compares two runs: --results RUN_A RUN_B (run folders)")
        a, b = (read_metrics(Path(r) / METRICS) for r in args.results)
        for col, (mean, top) in curve_gaps(a, b).items():
            print(f"{col:>10}: mean |gap| {mean:.4f}, max {top:.4f} over {len(a)} evaluations")
    elif args.what in ("all", "report", "demo"):
        if args.what != "demo" and args.results is None:  # the whole tree, each experiment present
            paths = write_every_report(args.root, args.out, ylim, args.protocol, args.noise_floor)
        else:
            paths = write_report(args.root, args.out, args.results, ylim, demo=args.what == "demo",
                                 protocol=args.protocol, floor=args.noise_floor)
        print("\n".join(f"wrote {p}" for p in paths))
    else:
        check_inputs(args.root, [args.what], args.results, args.protocol)
        art = render(args.what, args.root, args.out, args.results, ylim, args.protocol, args.fig7_measure)
        print("\n".join(f"wrote {f}" for f in art.files))
        if art.missing:
            print(f"missing runs: {', '.join(art.missing)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
