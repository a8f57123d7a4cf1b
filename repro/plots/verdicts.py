"""Verdicts on the paper's claims, each decided on the final training error of finished runs of one
protocol, and saying how sure it is.

A claim compares two nets (or, for the interaction, four) by a margin in points of final training error,
oriented so that a positive margin is what the paper says. The margin is judged against its standard
error: SE^2 = sum over the nets of sigma^2 / n, where n is the number of seeds and sigma the net's
seed-to-seed standard deviation when it has at least two seeds, else the noise floor. Then
    holds           margin >  2 SE
    does not hold   margin < -2 SE  (the opposite of the claim, beyond noise)
    inconclusive    otherwise
    not measured    a net the claim needs has no finished run.
Each claim is decided on its most telling pair (the shallowest and the deepest net measured; the deepest
depth with both a plain and a residual net); the other pairs are listed in the evidence.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import sqrt

import pandas as pd

from repro.names import display_name
from repro.results import final_rows

# Default noise floor for nets with one seed: seed-to-seed std of final training error, in points, as measured
# at the demo scale (width 8, 400 iterations, seeds 0-2: docs/demo.md, from committed result sets). Full-length
# runs vary less (Table 6's ResNet-110: 0.16 in test error, §4.2), so the floor is conservative there; set it
# with `python -m repro.plots report --noise-floor POINTS`.
NOISE_FLOOR = 1.5
# The demo's floor, by data set: the seed-to-seed std of final training error at the demo's protocol (exp=demo),
# pooled over its four nets (`pooled_seed_std`), from its committed seeds 0-4 (results/demo-8-20-seed<s>/demo-<data>,
# docs/demo.md); tests/test_plots.py recomputes it from those runs. Other data sets: NOISE_FLOOR.
DEMO_NOISE_FLOOR: dict[str, float] = {"deadleaves": 3.598, "cifar10": 1.391}  # the CIFAR-10 copy: JPEG-derived
Z = 2.0  # margins beyond two standard errors count
WORDS = ("holds", "does not hold", "inconclusive", "not measured")
CLAIMS = {
    "plain_deeper_worse": "Deeper plain nets have higher training error than shallower ones (degradation).",
    "residual_beats_plain": "Residual nets have lower training error than plain nets of the same depth.",
    "residual_deeper_no_worse": "Deeper residual nets have no higher training error than shallower ones.",
    "plain_penalty_exceeds_residual": "Going deeper costs plain nets more training error than residual nets "
                                      "(the degradation is specific to plain nets).",
}


@dataclass
class Verdict:
    family: str
    protocol: str
    claim: str
    verdict: str  # one of WORDS
    margin: float = float("nan")  # points; positive = as the paper says
    se: float = float("nan")  # standard error of the margin, points
    seeds: int = 0  # fewest seeds among the nets used
    nets: str = ""
    evidence: str = ""
    others: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return CLAIMS[self.claim]

    def row(self) -> dict:
        return {"family": self.family, "protocol": self.protocol, "claim": self.claim, "verdict": self.verdict,
                "margin": round(self.margin, 4), "se": round(self.se, 4), "threshold": round(Z * self.se, 4),
                "seeds": self.seeds, "nets": self.nets, "evidence": self.evidence}


@dataclass
class NetStats:
    mean: float  # final training error, points, mean over seeds
    sigma: float  # the std used for it (seed std, or the noise floor)
    n: int

    @property
    def measured(self) -> bool:
        """sigma from the seeds (True) or the floor (False)."""
        return self.n > 1


def net_stats(final: pd.DataFrame, floor: float) -> dict[tuple[int, str], NetStats]:
    out = {}
    for (depth, sc), runs in final.groupby(["depth", "shortcut"]):
        err = 100 * runs.train_err.astype(float)
        n = len(err)
        out[(int(depth), str(sc))] = NetStats(float(err.mean()), float(err.std()) if n > 1 else floor, n)
    return out


def pooled_seed_std(final: pd.DataFrame) -> float:
    """sqrt of the mean over nets of their seed-to-seed variance of final training error, in points (nets with
    at least two seeds): one noise floor for a set of nets measured over the same seeds."""
    var = [(100 * g.train_err.astype(float)).var() for _, g in final.groupby(["depth", "shortcut"]) if len(g) > 1]
    return float(sqrt(sum(var) / len(var))) if var else float("nan")


def demo_floor(data: str) -> tuple[float, str]:
    """The noise floor for a demo on `data`, and where it comes from (the report says it)."""
    if data in DEMO_NOISE_FLOOR:
        return DEMO_NOISE_FLOOR[data], f"the seed-to-seed spread measured over the demo's seeds 0-4 on {data}"
    return NOISE_FLOOR, "the default (no seeds of the demo measured on this data)"


def judge(margin: float, se: float) -> str:
    if margin > Z * se:
        return "holds"
    if margin < -Z * se:
        return "does not hold"
    return "inconclusive"


def _noise_text(stats: list[NetStats], floor: float) -> str:
    if all(s.measured for s in stats):
        return "seed-to-seed std"
    if not any(s.measured for s in stats):
        return f"floor {floor:g} points per net"
    return f"seed-to-seed std where measured, else floor {floor:g} points"


def _compare(family: str, protocol: str, claim: str, terms: list[tuple[float, tuple[int, str]]],
             stats: dict, floor: float) -> Verdict:
    """margin = sum(sign * mean) over `terms`; SE from the nets' sigmas."""
    nets = [net for _, net in terms]
    missing = [display_name(*n) for n in nets if n not in stats]
    if missing:
        return Verdict(family, protocol, claim, "not measured", evidence=f"no finished run of {', '.join(missing)}")
    used = [stats[n] for n in nets]
    margin = sum(sign * stats[n].mean for sign, n in terms)
    se = sqrt(sum(s.sigma ** 2 / s.n for s in used))
    word = judge(margin, se)
    parts = ", ".join(f"{display_name(*n)} {stats[n].mean:.2f}%" + (f" ± {stats[n].sigma:.2f} ({stats[n].n} seeds)"
                                                                    if stats[n].n > 1 else "") for n in nets)
    evidence = f"{parts}: margin {margin:+.2f} points against {Z:g} SE = {Z * se:.2f} (noise: {_noise_text(used, floor)})"
    return Verdict(family, protocol, claim, word, margin, se, min(s.n for s in used),
                   " vs ".join(display_name(*n) for n in nets), evidence)


def verdicts(df: pd.DataFrame, family: str, protocol: str, floor: float = NOISE_FLOOR) -> list[Verdict]:
    """The four claims on the finished runs of one protocol (`df` holds that protocol's rows only)."""
    final = final_rows(df) if not df.empty else df
    stats = net_stats(final, floor) if not final.empty else {}
    plain = sorted(d for d, s in stats if s == "none")
    # the residual nets: option A where present (the paper's CIFAR and Table 2 choice), else the first option
    options = sorted({s for _, s in stats if s != "none"}, key=lambda s: (s != "A", s))
    res = sorted(d for d, s in stats if options and s == options[0])
    ro = options[0] if options else "A"
    out = []

    def pair_claim(claim: str, depths: list[int], sc: str, deeper_is_worse_claim: bool) -> Verdict:
        if len(depths) < 2:
            need = "plain" if sc == "none" else "residual"
            return Verdict(family, protocol, claim, "not measured", evidence=f"needs finished {need} nets of two depths")
        lo, hi = depths[0], depths[-1]
        sign = 1.0 if deeper_is_worse_claim else -1.0  # margin positive = as the paper says
        v = _compare(family, protocol, claim, [(sign, (hi, sc)), (-sign, (lo, sc))], stats, floor)
        for a, b in zip(depths, depths[1:]):
            if (a, b) != (lo, hi):
                sub = _compare(family, protocol, claim, [(sign, (b, sc)), (-sign, (a, sc))], stats, floor)
                v.others.append(f"{sub.nets}: margin {sub.margin:+.2f} ({sub.verdict})")
        return v

    out.append(pair_claim("plain_deeper_worse", plain, "none", True))
    common = sorted(set(plain) & set(res))
    if common:
        d = common[-1]
        v = _compare(family, protocol, "residual_beats_plain", [(1.0, (d, "none")), (-1.0, (d, ro))], stats, floor)
        for other in common[:-1]:
            sub = _compare(family, protocol, "residual_beats_plain", [(1.0, (other, "none")), (-1.0, (other, ro))],
                           stats, floor)
            v.others.append(f"{sub.nets}: margin {sub.margin:+.2f} ({sub.verdict})")
        out.append(v)
    else:
        out.append(Verdict(family, protocol, "residual_beats_plain", "not measured",
                           evidence="needs finished plain and residual nets of one depth"))
    out.append(pair_claim("residual_deeper_no_worse", res, ro, False))
    if len(common) >= 2:
        lo, hi = common[0], common[-1]
        # (plain_hi - plain_lo) - (res_hi - res_lo): positive = the plain nets lose more by going deeper
        out.append(_compare(family, protocol, "plain_penalty_exceeds_residual",
                            [(1.0, (hi, "none")), (-1.0, (lo, "none")), (-1.0, (hi, ro)), (1.0, (lo, ro))],
                            stats, floor))
    else:
        out.append(Verdict(family, protocol, "plain_penalty_exceeds_residual", "not measured",
                           evidence="needs finished plain and residual nets at two common depths"))
    return out


def verdict_table(vs: list[Verdict]) -> pd.DataFrame:
    cols = ["family", "protocol", "claim", "verdict", "margin", "se", "threshold", "seeds", "nets", "evidence"]
    return pd.DataFrame([v.row() for v in vs], columns=cols)
