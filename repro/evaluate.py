"""Re-evaluate a finished run from its folder: `python -m repro.evaluate RUN_DIR [--device cpu] [--data-root DIR]`.

Loads the run's `config.yaml`, `meta.json` and `model.pt`, rebuilds the net with the speed switches the run
recorded (bf16 autocast, channels_last: they decide the evaluation's arithmetic), and recomputes on a chosen
device (a) the final test error and loss, as the loop evaluated them, and (b) Fig. 7's responses and their
explanation columns (repro.train.analysis, fp32). Then it compares them with the last row of `metrics.csv` and with
`responses.csv` and says whether they agree: on the device the run trained on, the test error must be the
logged one exactly; on another device, to a borderline image or two. Exit 0 when they agree, 1 when not, 2 on
bad input (a missing folder, model or data).
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
from dataclasses import fields
from pathlib import Path

import torch
from omegaconf import OmegaConf

from repro.data.sources import load_source
from repro.errors import DataError, ResultsError, command
from repro.models import build_model
from repro.results import CONFIG, METRICS, MODEL, RESPONSES, read_meta, read_metrics
from repro.train.analysis import COLUMNS, format_rows, response_stats
from repro.train.fast import Fast
from repro.train.runtime import configure_backends, resolve_device


def recorded_fast(meta: dict) -> Fast:
    """The switches the run recorded (eager: compile and the step graph do not change the arithmetic)."""
    saved = meta.get("fast") or {}
    known = {f.name for f in fields(Fast)}
    return Fast(**{k: v for k, v in saved.items() if k in known and k not in ("compile", "graph")})


def same_device(meta: dict, device: torch.device) -> bool:
    where = meta.get("device", "")
    if device.type == "cuda":
        return where.startswith(torch.cuda.get_device_name(device))
    return where.startswith("cpu")


def summary(rows: list[dict], model) -> dict:
    """What the responses say in a few numbers: their median std, the BNs' mean |gamma| (median, range), and the
    branch-over-shortcut std ratio, median over all residual blocks and per stage (none for a plain net)."""
    ratios = [r["branch_over_shortcut"] for r in rows if r["branch_over_shortcut"] is not None]
    gammas = [r["gamma_abs_mean"] for r in rows]
    by_stage, at = [], 0
    for stage in model.stages if ratios else []:  # residual blocks are the ratio rows, in layer order
        by_stage.append(statistics.median(ratios[at:at + len(stage)]))
        at += len(stage)
    return {"std_median": statistics.median(r["std"] for r in rows), "gamma_abs_mean_median": statistics.median(gammas),
            "gamma_abs_mean_range": [min(gammas), max(gammas)],
            "branch_over_shortcut_median": statistics.median(ratios) if ratios else None,
            "branch_over_shortcut_by_stage": by_stage}


def reevaluate(run_dir: Path, device_name: str = "auto", data_root: str | None = None) -> dict:
    """What the run's model.pt gives now against what the run logged (module docstring)."""
    run_dir = Path(run_dir)
    for name in (CONFIG, METRICS, MODEL):
        if not (run_dir / name).exists():
            hint = " (the run saved no weights: save_model=false, or it is not finished)" if name == MODEL else ""
            raise ResultsError(f"{run_dir / name} not found{hint}; re-evaluation needs a finished run folder")
    cfg = OmegaConf.load(run_dir / CONFIG)
    meta = read_meta(run_dir)
    if data_root is not None:
        cfg.data.root = data_root
    cfg.data.download = False
    device = resolve_device(device_name, None)
    configure_backends(device, bool(cfg.get("deterministic", False)))
    src = load_source(cfg, device)
    if meta.get("data_md5") and src.tensors is not None and src.tensors.md5 != meta["data_md5"]:
        raise DataError(f"{cfg.data.root} holds other CIFAR-10 files than {run_dir} was trained on (md5s differ); "
                        f"point --data-root at the copy it used")
    model = build_model(cfg.model.family, cfg.model.depth, cfg.model.shortcut, width=cfg.model.width,
                        num_classes=src.num_classes if cfg.model.family == "imagenet" else None)
    try:
        model.load_state_dict(torch.load(run_dir / MODEL, map_location="cpu", weights_only=True))
    except Exception as e:
        raise ResultsError(f"cannot load {run_dir / 'model.pt'} ({type(e).__name__}: {e})") from None
    net = recorded_fast(meta).apply(model, device)
    loss_sum, errs, n = src.splits["test"](net).tolist()
    last = read_metrics(run_dir / METRICS).iloc[-1]
    exact = same_device(meta, device)
    out = {"run": str(run_dir), "device": str(device), "trained_on": meta.get("device"), "same_device": exact,
           "step": int(last.step), "test_err": errs / n, "logged_test_err": float(last.test_err),
           "test_loss": loss_sum / n, "logged_test_loss": float(last.test_loss), "test_images": int(n)}
    out["test_err_agrees"] = out["test_err"] == out["logged_test_err"] if exact else \
        abs(out["test_err"] - out["logged_test_err"]) <= 2 / n  # another device: a borderline image may flip
    if src.tensors is not None:  # the model as finish() measured it: fp32, its weights' layout as trained
        rows = response_stats(model, src.tensors.test_x, src.tensors.mean, cfg.data.eval_batch_size)
        out["explain"] = summary(rows, model)
        now = format_rows(rows)
        out["responses"] = [dict(zip(COLUMNS, r)) for r in now]
        if (run_dir / RESPONSES).exists():
            with open(run_dir / RESPONSES) as f:
                logged = list(csv.reader(f))[1:]
            out["responses_agree"] = [r[:2] for r in logged] == [r[:2] for r in now]  # layer, std as written
    out["agrees"] = out["test_err_agrees"] and out.get("responses_agree", True)
    return out


@command  # Ctrl-C, a full disk, a read-only folder: one line
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m repro.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a finished run folder, e.g. results/fig6_short/cifar10-resnet-56-s0")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    p.add_argument("--data-root", default=None, help="where the run's data is now (default: its config's data.root)")
    p.add_argument("--json", type=Path, default=None, help="also write the comparison (and the responses) here")
    args = p.parse_args(argv)
    r = reevaluate(args.run_dir, args.device, args.data_root)  # bad input: one line (repro.errors.command)
    how = "exactly (same device)" if r["same_device"] else f"within 2 images (trained on {r['trained_on']})"
    print(f"[evaluate] {r['run']} at step {r['step']} on {r['device']}: test_err {r['test_err']:.4f} "
          f"(logged {r['logged_test_err']:.4f}), test_loss {r['test_loss']:.4f} (logged {r['logged_test_loss']:.4f}) "
          f"over {r['test_images']} images -> {'agrees' if r['test_err_agrees'] else 'DIFFERS'} {how}")
    if "responses_agree" in r:
        print(f"[evaluate] responses.csv (layer, std): {'agrees' if r['responses_agree'] else 'DIFFERS'}")
    if (e := r.get("explain")) is not None:
        lo, hi = e["gamma_abs_mean_range"]
        ratio = "none (plain net)" if e["branch_over_shortcut_median"] is None else \
            f"median {e['branch_over_shortcut_median']:.2f}, by stage " + \
            " / ".join(f"{v:.2f}" for v in e["branch_over_shortcut_by_stage"])
        print(f"[evaluate] responses: std median {e['std_median']:.2f}; BN mean |gamma| median "
              f"{e['gamma_abs_mean_median']:.2f} ({lo:.2f}-{hi:.2f}); branch std / shortcut std {ratio}")
    if args.json:
        args.json.write_text(json.dumps(r, indent=2) + "\n")
    return 0 if r["agrees"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
