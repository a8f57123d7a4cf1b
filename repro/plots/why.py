"""Why deeper plain nets train worse: the two explanations, measured (torch-free; the measurements come from
`repro-diagnose`, repro/diagnose.py, and from the runs' training curves).

- Gradients, relative steps and signals by layer (`diagnostics.csv`): figures `gradients`, `step_size` and
  `signal`; the verdicts' gradient ratio and the block gains through training: `gradient_ratio`.
- Convergence rate (`convergence`): for each run, the first evaluation at which its training error is below
  each of LEVELS; against depth, for plain and residual nets, with an exponential fit (log steps linear in
  depth) and a power law (log steps linear in log depth), each slope with its standard error, and each fit's
  prediction of the deepest net from the others (held back).
- Verdicts on the two explanations (`why_verdicts`), on thresholds fixed here before any reference net was
  measured (issue 32):
    plain_gradients_vanish            the input-side gradient (the residual stream's, after the first conv)
                                      is below VANISH times the output side's (after the last block) in some
                                      measured plain net, seed and step
    plain_gradients_explode_at_init   at initialisation it is above EXPLODE times the output side's in every
                                      seed of the deepest plain net measured
    block_gain_at_least_one           every residual block's backward gain (||dL/dx_in|| / ||dL/dx_out||) is
                                      >= 1, the "1 + F'(x)" argument; the fraction below 1 is the evidence
    plain_convergence_slows_exponentially  for the plain nets (>= 3 depths reaching LEVEL), the exponential fit
                                      has the smaller residual and predicts the held-back deepest net's steps
                                      within a factor HELD_BACK
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from repro.names import display_name  # noqa: E402
from repro.plots.figures import save  # noqa: E402
from repro.plots.tables import Artefact, save_table  # noqa: E402

VANISH = 1 / 100  # input-side / output-side gradient norm below this: vanishing (issue 32, stated beforehand)
EXPLODE = 10.0  # above this at initialisation: exploding toward the input
HELD_BACK = 1.5  # the exponential fit predicts the deepest plain net's steps within this factor
LEVELS = (0.8, 0.6, 0.4)  # training-error levels whose first crossing is the convergence measure
POINTS = 4  # the figures' training points besides initialisation (issue 32: "at init and at 3-4 points")
LEVEL = 0.6  # the level the verdict and the figure's fits use (the 60%)
CLAIMS = {
    "plain_gradients_vanish": "Gradients vanish toward the input in deep plain nets (the popular explanation).",
    "plain_gradients_explode_at_init": "At initialisation, gradients grow toward the input in deep plain BN nets "
                                       "(mean-field theory, Yang et al. 2019).",
    "block_gain_at_least_one": "Every residual block passes at least as much gradient back as it receives "
                               "(the '1 + F'(x) >= 1' argument).",
    "plain_convergence_slows_exponentially": "Deep plain nets converge exponentially slower with depth (§4.1's "
                                             "conjecture).",
}


@dataclass
class WhyVerdict:
    """A verdict on an explanation (report.verdict_table and the terminal read it as they read Verdict)."""

    claim: str
    verdict: str  # holds, does not hold, not measured
    value: float
    threshold: str
    evidence: str

    family = "cifar10"
    protocol = "diagnostics"

    def row(self) -> dict:
        return {"family": self.family, "protocol": self.protocol, "claim": self.claim, "verdict": self.verdict,
                "margin": round(self.value, 6) if np.isfinite(self.value) else np.nan, "se": np.nan,
                "threshold": self.threshold, "seeds": np.nan, "nets": "", "evidence": self.evidence}


def files_in(folders, name: str) -> list[Path]:
    """The files called `name` in `folders` and in their run folders (diagnostics.csv lives in either)."""
    found = []
    for f in map(Path, folders):
        found += [p for p in [f / name, *sorted(f.glob(f"*/{name}"))] if p.exists()]
    return found


def read_diagnostics(folders) -> pd.DataFrame:
    """Every diagnostics.csv in `folders` and in their run folders (repro.diagnose.COLUMNS), one frame."""
    frames = [pd.read_csv(p).assign(file=str(p)) for p in files_in(folders, "diagnostics.csv")]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def residual_gains(diag: pd.DataFrame) -> pd.DataFrame:
    """The rows of residual blocks' last layers, where a block's backward gain is measured."""
    return diag[(diag.shortcut != "none") & diag.block_gain.notna()] if not diag.empty else diag


def stream_ratios(diag: pd.DataFrame) -> pd.DataFrame:
    """Per (net, depth, shortcut, width, seed, step, data): the input-side over the output-side gradient of the
    residual stream (first row with a stream gradient over the last)."""
    rows = []
    keys = ["net", "depth", "shortcut", "width", "seed", "step", "data"]
    for key, g in diag.dropna(subset=["stream_grad_norm"]).sort_values("layer").groupby(keys):
        rows.append(dict(zip(keys, key), ratio=g.stream_grad_norm.iloc[0] / g.stream_grad_norm.iloc[-1]))
    return pd.DataFrame(rows, columns=[*keys, "ratio"])


def _nets(diag: pd.DataFrame) -> list[tuple[int, str]]:
    return sorted(set(zip(diag.depth, diag.shortcut)), key=lambda n: (n[1] != "none", n[0]))


def shown_steps(steps, points: int = POINTS) -> list:
    """Initialisation and at most `points` measured training steps, spread evenly (the last always among them)."""
    steps = sorted(steps)
    init, trained = [s for s in steps if s == 0], [s for s in steps if s > 0]
    if len(trained) > points:
        trained = [trained[round(i * (len(trained) - 1) / (points - 1))] for i in range(points)]
    return init + trained


def _by_layer(diag: pd.DataFrame, out: Path, name: str, title: str, column: str, ylabel: str, log: bool,
              note: str) -> Artefact:
    """`column` against layer, plain nets left, residual right, one row of panels per step measured; the mean over
    seeds, the band their min to max."""
    diag = diag.dropna(subset=[column])
    measured = sorted(diag.step.unique())
    steps = shown_steps(measured) or [0]
    fig, axes = plt.subplots(len(steps), 2, figsize=(11, 3.4 * len(steps)), squeeze=False, sharey=True)
    cmap = plt.cm.viridis
    depths = sorted(diag.depth.unique())
    for r, step in enumerate(steps):
        for c, plain in enumerate((True, False)):
            ax = axes[r][c]
            sub = diag[(diag.step == step) & ((diag.shortcut == "none") == plain)]
            for depth, g in sub.groupby("depth"):
                stats = g.groupby("layer")[column].agg(["mean", "min", "max"])
                color = cmap(depths.index(depth) / max(1, len(depths) - 1))
                seeds = g.seed.nunique()
                ax.plot(stats.index, stats["mean"], color=color,
                        label=f"{g.net.iloc[0]}" + (f" ({seeds} seeds)" if seeds > 1 else ""))
                if seeds > 1:
                    ax.fill_between(stats.index, stats["min"], stats["max"], color=color, alpha=0.2, lw=0)
            ax.set_title(f"{'plain' if plain else 'residual'} nets, " + ("at initialisation" if step == 0
                                                                         else f"after {step} iterations"))
            if log:
                ax.set_yscale("log")
            ax.set_xlabel("layer (input → output)")
            ax.grid(alpha=0.3)
            if c == 0:
                ax.set_ylabel(ylabel)
            if len(sub):
                ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (3.4 * len(steps))))  # the title above the top row's
    files = save(fig, out, name)
    data = ", ".join(sorted(set(diag.data))) or "—"
    left = [s for s in measured if s not in steps]
    more = f" Also measured, not drawn: step{'s' if len(left) > 1 else ''} {', '.join(map(str, left))} " \
           f"(diagnostics.csv)." if left else ""
    return Artefact(name, title, files, caption=f"{note} Measured by repro-diagnose on fixed training batches of "
                                                f"{data}, training mode.{more} {_count(diag)}")


def _count(diag: pd.DataFrame) -> str:
    if diag.empty:
        return "No diagnostics.csv found (run repro-diagnose; make diagnose)."
    parts = []
    for net, g in diag.groupby("net"):
        steps, seeds = sorted(g.step.unique()), g.seed.nunique()
        at = f"step {steps[0]}" if len(steps) == 1 else f"steps {', '.join(map(str, steps))}"
        parts.append(f"{net} at {at} ({seeds} seed{'s' if seeds > 1 else ''})")
    return "Nets: " + "; ".join(parts) + "."


def gradients(diag: pd.DataFrame, out: Path) -> Artefact:
    """The check §4.1 describes: the backward gradient's norm, layer by layer (the convs; the fc's logits, another
    quantity, left out)."""
    return _by_layer(diag[diag.name != "fc"] if len(diag) else diag, out, "gradients", "Gradient norm by layer, plain vs residual (§4.1)", "act_grad_norm",
                     "||dL/dy|| (y: a layer's BN output)", True,
                     "The norm of the loss gradient with respect to each conv layer's output (its BN output), the "
                     "batch-mean cross-entropy's, averaged over the batches. A line falling toward "
                     "the input (left) would be vanishing gradients; rising toward it, exploding ones.")


def gradient_ratio(diag: pd.DataFrame, out: Path) -> Artefact:
    """Through training: each net's input-side / output-side gradient of the residual stream (the verdicts' ratio,
    against VANISH and EXPLODE), and the fraction of residual blocks whose backward gain is below 1."""
    ratios = stream_ratios(diag) if not diag.empty else pd.DataFrame(columns=["net", "depth", "shortcut", "step"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for depth, shortcut in _nets(ratios):
        g = ratios[(ratios.depth == depth) & (ratios.shortcut == shortcut)]
        stats = g.groupby("step").ratio.agg(["mean", "min", "max"])
        seeds = g.seed.nunique()
        line = left.plot(stats.index, stats["mean"], marker="o", ms=3, ls="-" if shortcut == "none" else "--",
                         label=display_name(depth, shortcut) + (f" ({seeds} seeds)" if seeds > 1 else ""))
        if seeds > 1:
            left.fill_between(stats.index, stats["min"], stats["max"], color=line[0].get_color(), alpha=0.15, lw=0)
    for y, what in ((VANISH, "vanishing"), (1.0, None), (EXPLODE, "exploding")):
        left.axhline(y, color="grey", lw=0.8, ls=":" if what else "-")
        if what:
            left.text(0.01, y, f" {what} ({y:g})", transform=left.get_yaxis_transform(), fontsize=7, va="bottom")
    left.set_yscale("log")
    left.set_xlabel("iteration")
    left.set_ylabel("input-side / output-side ||dL/dx||")
    left.set_title("Gradient ratio through the residual stream")
    gains = residual_gains(diag)
    if len(gains):
        for (depth, shortcut), g in gains.groupby(["depth", "shortcut"]):
            below = g.groupby("step").block_gain.apply(lambda b: (b < 1).mean())
            right.plot(below.index, below.values, marker="o", ms=3, label=display_name(depth, shortcut))
    right.set_ylim(0, 1)
    right.set_xlabel("iteration")
    right.set_ylabel("fraction of blocks with gain < 1")
    right.set_title("Residual blocks passing back less than they receive")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    files = save(fig, out, "gradient_ratio")
    return Artefact("gradient_ratio", "Gradient ratio and block gains through training", files,
                    caption="Left: the norm of the loss gradient at the residual stream's input end (after the first "
                            "conv) over its output end (after the last block), the ratio the verdicts read: below "
                            f"{VANISH:g} would be vanishing, above {EXPLODE:g} exploding toward the input. Right: the "
                            "fraction of residual blocks whose backward gain ||dL/dx_in|| / ||dL/dx_out|| is below 1 "
                            "(the '1 + F'(x)' argument says none). Mean over seeds, band min to max. "
                            + _count(diag))


def step_size(diag: pd.DataFrame, out: Path) -> Artefact:
    """How far SGD moves each layer's weights relative to their size: lr x ||dL/dW|| / ||W|| (with BN after a conv,
    the layer's output does not depend on its weights' scale, so this, not the raw gradient, is its speed)."""
    return _by_layer(diag[diag.name != "fc"] if len(diag) else diag, out, "step_size",
                     "Relative step by layer: lr x ||dL/dW|| / ||W||", "eff_step",
                     "lr x ||dL/dW|| / ||W||", True,
                     "The effective step of each conv layer's weights at the run's lr then (at initialisation: 0.1, "
                     "§4.2's): the fraction of its own norm one SGD step (momentum aside) moves a weight. A layer "
                     "far below the others barely learns; far above, it is thrown around.")


FROZEN = 1e-4  # a conv layer whose relative step lr x ||dL/dW|| / ||W|| is below this barely moves (summary column)


def diagnostics_summary(diag: pd.DataFrame, out: Path) -> Artefact:
    """One row per net, seed and step measured: the verdicts' gradient ratio, the block gains, the relative steps
    (the largest, the smallest, how many conv layers below FROZEN) and dead units (the worst layer, the mean)."""
    ratios = stream_ratios(diag).set_index(["net", "seed", "step"]).ratio if not diag.empty else pd.Series()
    rows = []
    for depth, shortcut in _nets(diag) if not diag.empty else []:
        for (seed, step), g in diag[(diag.depth == depth) & (diag.shortcut == shortcut)].groupby(["seed", "step"]):
            net, conv, gains = g.net.iloc[0], g[g.name != "fc"], residual_gains(g).block_gain
            rows.append({"net": net, "seed": seed, "step": step, "grad_ratio": ratios.get((net, seed, step)),
                         "median_block_gain": gains.median(),
                         "blocks_gain_below_1": (gains < 1).mean() if shortcut != "none" else np.nan,
                         "largest_step": conv.eff_step.max(), "smallest_step": conv.eff_step.min(),
                         "layers_below_frozen": int((conv.eff_step < FROZEN).sum()), "conv_layers": len(conv),
                         "dead_worst_layer": g.dead_relu.max(), "dead_mean": g.dead_relu.mean()})
    table = pd.DataFrame(rows)
    shown = table.apply(lambda c: c.map(lambda v: float(f"{v:.4g}")) if c.dtype.kind == "f" else c)  # 4 digits
    files = save_table(shown, out, "diagnostics_summary") if len(table) else []
    return Artefact("diagnostics_summary", "Diagnostics by net and step", files, table=table,
                    caption=f"Per net, seed and step: grad_ratio, the input-side / output-side gradient of the "
                            f"residual stream (the verdicts'); the residual blocks' median backward gain and the "
                            f"fraction below 1; the relative step lr x ||dL/dW|| / ||W|| of the conv layers: largest, smallest, and "
                            f"how many are below {FROZEN:g}; dead units (zero for every image of the batch): the "
                            f"worst layer's fraction and the mean over layers. " + _count(diag))


def signal(diag: pd.DataFrame, out: Path) -> Artefact:
    """The forward signal: the std of each block's output (the residual stream), §4.1's 'non-zero variances'."""
    return _by_layer(diag, out, "signal", "Forward signal by layer: std of each block's output", "stream_std",
                     "std of the block's output", True,
                     "The standard deviation of every block's output (after the addition and the ReLU; for plain "
                     "nets the block's output), and of the first conv's (after its ReLU), on the batch.")


def convergence_steps(df: pd.DataFrame, levels=LEVELS) -> pd.DataFrame:
    """Per run: the first evaluated step at which the training error (the row's window mean) is below each level
    (NaN when it never is), before the first lr drop (a warm-up's rows, below the peak lr, count: they come first)."""
    rows = []
    for path, g in df.groupby("path"):
        g = g.sort_values("step")
        g = g[(g.lr >= g.lr.cummax()).cumprod().astype(bool)]  # up to the first row below the peak so far
        row = {"path": path, "depth": int(g.depth.iloc[0]), "shortcut": g.shortcut.iloc[0],
               "seed": int(g.seed.iloc[0]), "protocol": g.protocol.iloc[0], "eval_every": int(g.step.diff().min())
               if len(g) > 1 else np.nan, "last_step": int(g.step.max())}  # an unfinished run: known to here
        for lv in levels:
            hit = g[g.train_err < lv]
            row[f"steps_to_{int(lv * 100)}"] = float(hit.step.iloc[0]) if len(hit) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


@dataclass
class Fit:
    kind: str  # exponential or power
    slope: float
    slope_se: float
    intercept: float
    rss: float  # residual sum of squares of log(steps)
    held_back_ratio: float  # predicted / observed steps of the deepest net, fitted without it (NaN: < 3 others)

    def predict(self, depth) -> np.ndarray:
        x = np.asarray(depth, float) if self.kind == "exponential" else np.log(np.asarray(depth, float))
        return np.exp(self.intercept + self.slope * x)


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    """slope, its standard error, intercept, residual sum of squares."""
    a = np.vstack([x, np.ones_like(x)]).T
    (slope, icpt), *_ = np.linalg.lstsq(a, y, rcond=None)
    res = y - (slope * x + icpt)
    rss = float(res @ res)
    dof = len(x) - 2
    se = float(np.sqrt(rss / dof / ((x - x.mean()) ** 2).sum())) if dof > 0 else np.nan
    return float(slope), se, float(icpt), rss


def fit(depths, steps, kind: str) -> Fit:
    """log(steps) = a + b * depth (exponential) or a + b * log(depth) (power law), least squares over runs."""
    d, s = np.asarray(depths, float), np.asarray(steps, float)
    x = d if kind == "exponential" else np.log(d)
    slope, se, icpt, rss = _ols(x, np.log(s))
    ratio = np.nan
    deepest = d.max()
    rest = d < deepest
    if len(np.unique(d[rest])) >= 2:
        b, _, a, _ = _ols(x[rest], np.log(s[rest]))
        xd = deepest if kind == "exponential" else np.log(deepest)
        ratio = float(np.exp(a + b * xd) / np.exp(np.log(s[~rest]).mean()))
    return Fit(kind, slope, se, icpt, rss, ratio)


def convergence(df: pd.DataFrame, out: Path, scope: str = "") -> Artefact:
    """Steps to reach LEVEL training error against depth, plain and residual, with both fits (figure), and every
    run's steps to each of LEVELS (table)."""
    steps = convergence_steps(df) if not df.empty else pd.DataFrame()
    col = f"steps_to_{int(LEVEL * 100)}"
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    notes = []
    for plain, color in ((True, "#d62728"), (False, "#1f77b4")):
        sub = steps[(steps.shortcut == "none") == plain].dropna(subset=[col]) if len(steps) else steps
        name = "plain" if plain else "residual"
        if sub.empty:
            continue
        ax.scatter(sub.depth, sub[col], color=color, label=f"{name} nets")
        if sub.depth.nunique() >= 3:
            grid = np.linspace(sub.depth.min(), sub.depth.max(), 50)
            for f, ls in ((fit(sub.depth, sub[col], "exponential"), "-"), (fit(sub.depth, sub[col], "power"), ":")):
                ax.plot(grid, f.predict(grid), ls=ls, color=color, lw=1,
                        label=f"{name}: {f.kind} fit (slope {f.slope:.3g} ± {f.slope_se:.2g})")
                notes.append(f"{name} {f.kind}: slope {f.slope:.4g} ± {f.slope_se:.2g}, residual {f.rss:.3g}, "
                             f"held-back deepest predicted/observed {f.held_back_ratio:.2f}")
        never = steps[((steps.shortcut == "none") == plain) & steps[col].isna()] if len(steps) else steps
        if len(never):
            notes.append(f"{name} runs that did not reach {LEVEL:.0%} (by their last evaluation): " + ", ".join(
                f"{display_name(d, s)} seed {k} (step {n})" for d, s, k, n in
                zip(never.depth, never.shortcut, never.seed, never.last_step)))
    ax.set_yscale("log")
    ax.set_xlabel("depth (layers)")
    ax.set_ylabel(f"iterations to training error < {LEVEL:.0%}")
    ax.set_title("Convergence rate against depth (first lr phase)")
    ax.grid(alpha=0.3)
    if len(steps):
        ax.legend(fontsize=7)
    fig.tight_layout()
    files = save(fig, out, "convergence")
    if len(steps):
        files += save_table(steps.drop(columns=["path"]).sort_values(["shortcut", "depth", "seed"]), out,
                            "convergence")
    grid_note = f" Evaluated every {int(steps.eval_every.min())} iterations: a step is known to that grid." \
        if len(steps) and steps.eval_every.notna().any() else ""
    return Artefact("convergence", "Convergence rate against depth", files,
                    caption=f"The first evaluation at which each run's training error (the window's mean) is below "
                            f"{LEVEL:.0%}, in its first lr phase.{grid_note} Fits in log steps: exponential "
                            f"(log steps linear in depth) and power law (linear in log depth). "
                            + " ".join(n + "." for n in notes) + (f" {scope}" if scope else ""))


def why_verdicts(diag: pd.DataFrame, runs: pd.DataFrame) -> list[WhyVerdict]:
    """The module docstring's four claims, on these measurements."""
    out, diag = [], diag.reset_index(drop=True)  # one label per row (frames concatenated as they came)
    ratios = stream_ratios(diag) if not diag.empty else pd.DataFrame(columns=["shortcut", "ratio", "step", "depth"])
    plain = ratios[ratios.shortcut == "none"]
    if plain.empty:
        out.append(WhyVerdict("plain_gradients_vanish", "not measured", np.nan, f"< {VANISH:g}",
                              "no plain net in diagnostics.csv"))
        out.append(WhyVerdict("plain_gradients_explode_at_init", "not measured", np.nan, f"> {EXPLODE:g}",
                              "no plain net in diagnostics.csv"))
    else:
        low = plain.loc[plain.ratio.idxmin()]
        out.append(WhyVerdict("plain_gradients_vanish", "holds" if low.ratio < VANISH else "does not hold",
                              float(low.ratio), f"< {VANISH:g}",
                              f"smallest input-side / output-side gradient ratio over {len(plain)} plain measurements "
                              f"(at step{'s' if plain.step.nunique() > 1 else ''} "
                              f"{', '.join(str(int(s)) for s in sorted(plain.step.unique()))}): "
                              f"{low.ratio:.3g} ({low.net}, seed {low.seed}, step {low.step})"
                              + (" — at initialisation only: trained nets not measured" if plain.step.max() == 0
                                 else "")))
        init = plain[plain.step == 0]
        if init.empty:
            out.append(WhyVerdict("plain_gradients_explode_at_init", "not measured", np.nan, f"> {EXPLODE:g}",
                                  "no plain net measured at initialisation"))
        else:
            deep = init[init.depth == init.depth.max()]
            lowest = float(deep.ratio.min())
            out.append(WhyVerdict("plain_gradients_explode_at_init", "holds" if lowest > EXPLODE else "does not hold",
                                  lowest, f"> {EXPLODE:g}",
                                  f"{deep.net.iloc[0]} at initialisation, {len(deep)} "
                                  f"seed{'s' if len(deep) > 1 else ''}: input-side / output-side "
                                  f"gradient {deep.ratio.min():.3g} to {deep.ratio.max():.3g}"))
    gains = residual_gains(diag)
    if gains.empty:
        out.append(WhyVerdict("block_gain_at_least_one", "not measured", np.nan, "none < 1",
                              "no residual net in diagnostics.csv"))
    else:
        below = (gains.block_gain < 1).mean()
        worst = gains.loc[gains.block_gain.idxmin()]
        out.append(WhyVerdict("block_gain_at_least_one", "holds" if below == 0 else "does not hold", float(below),
                              "none < 1", f"{below:.1%} of {len(gains)} residual blocks measured have a backward gain "
                                          f"below 1; the smallest {worst.block_gain:.3f} ({worst.net} {worst['name']}, "
                                          f"seed {worst.seed}, step {worst.step})"))
    out.append(_convergence_verdict(runs))
    return out


def _convergence_verdict(runs: pd.DataFrame) -> WhyVerdict:
    name = "plain_convergence_slows_exponentially"
    col = f"steps_to_{int(LEVEL * 100)}"
    steps = convergence_steps(runs) if not runs.empty else pd.DataFrame(columns=["shortcut", col, "depth"])
    plain = steps[steps.shortcut == "none"].dropna(subset=[col])
    if len(plain):  # one protocol, never pooled: the one with the most plain depths, then runs, then the finest grid
        per = plain.groupby("protocol").agg(depths=("depth", "nunique"), runs=("path", "size"),
                                            grid=("eval_every", "min"))
        best = per.assign(grid=-per.grid).sort_values(["depths", "runs", "grid"], ascending=False).index[0]
        plain = plain[plain.protocol == best]
    if plain.depth.nunique() < 3:
        return WhyVerdict(name, "not measured", np.nan, f"exp. residual smaller, held back within {HELD_BACK:g}x",
                          f"needs plain nets of >= 3 depths reaching {LEVEL:.0%} (have {plain.depth.nunique()})")
    e, p = fit(plain.depth, plain[col], "exponential"), fit(plain.depth, plain[col], "power")
    within = np.isfinite(e.held_back_ratio) and 1 / HELD_BACK <= e.held_back_ratio <= HELD_BACK
    ok = e.slope > 0 and e.rss < p.rss and within
    return WhyVerdict(name, "holds" if ok else "does not hold", e.held_back_ratio,
                      f"exp. residual smaller, held back within {HELD_BACK:g}x",
                      f"{len(plain)} plain runs ({plain.seed.nunique()} seed(s)) of protocol {plain.protocol.iloc[0]}, "
                      f"depths {', '.join(map(str, sorted(plain.depth.unique())))}, evaluated every "
                      f"{int(plain.eval_every.min())} iterations (a crossing is known to that grid): "
                      f"exponential slope {e.slope:.4g} ± {e.slope_se:.2g} per layer (steps "
                      f"x{np.exp(e.slope * 12):.2f} per 12 layers), residual {e.rss:.3g}; power law exponent {p.slope:.3g} ± {p.slope_se:.2g}, "
                      f"residual {p.rss:.3g}; the deepest held back: exponential predicts {e.held_back_ratio:.2f}x, "
                      f"power law {p.held_back_ratio:.2f}x its observed steps")
