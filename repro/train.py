"""Train one plain or residual net with the paper's protocol: `python -m repro.train [-m] exp=...`.

The loop (`train`) is iteration-based, as §4.2 is: the learning rate is a function of the step
(`lr_at`), the batches are a pure function of (seed, step), and running sums stay on the device until an
evaluation point, where one CSV row is written and flushed and then a checkpoint is saved. Re-running the
same command resumes from that checkpoint. Under torchrun the same loop runs data-parallel (DDP): every
rank trains on its slice of the global batch, sums are all-reduced, rank 0 alone writes results.
"""
from __future__ import annotations

import io
import math
import os
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import hydra
import torch
import torch.distributed as dist
import torch.nn.functional as F
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .checkpoint import SignalFlag, State, fault_point, load_checkpoint, save_checkpoint
from .data import DataError, cifar_fingerprint, is_official
from .fast import Fast, FastConfigError, resolve_fast, tune_cpu_allocator
from .models import SHORTCUTS, arch_for, build_model, count_params
from .names import display_name, run_name
from .results import (MetricsWriter, ResultsError, atomic_write, columns_for, git_revision, prepare_run_dir,
                      truncate_metrics, update_meta)
from .sources import Source, load_source


class ConfigError(Exception):
    """A config value that cannot work; the message names it and the fix."""


USER_ERRORS = (ConfigError, DataError, ResultsError, FastConfigError)
PAPER_SCALE = {  # §4.2 (CIFAR-10) and §3.4 (ImageNet): iterations, batch size, first-stage width
    "cifar10": {"total_steps": 64_000, "batch_size": 128, "width": 16},
    "imagenet": {"total_steps": 600_000, "batch_size": 256, "width": 64},
}


def lr_at(step: int, optim: DictConfig | dict, warming_up: bool = False, decays: int = 0) -> float:
    """Learning rate of iteration `step` (0-based): warmup_lr while warming up (§4.2); else the base lr
    divided by 1/gamma at each milestone (fractions of total_steps), or — with schedule 'plateau' — once
    for each plateau of the evaluation error so far (§3.4)."""
    if warming_up:
        return float(optim["warmup_lr"])
    if optim.get("schedule", "milestones") == "plateau":
        passed = decays
    else:
        passed = sum(step >= round(m * optim["total_steps"]) for m in optim["milestones"])
    return float(f"{optim['lr'] * optim['gamma'] ** passed:.12g}")  # 0.001, not 0.0010000000000000002


def uses_warmup(optim: DictConfig, depth: int) -> bool:
    start = optim.get("warmup_from_depth")
    return optim.get("warmup_lr") is not None and (start is None or depth >= start)


def plateau_step(state: State, err: float, optim: DictConfig) -> bool:
    """Update the plateau rule with a new evaluation error; True when the lr should drop now."""
    if err < state.best_err - optim.plateau_threshold:
        state.best_err, state.since_best = err, 0
        return False
    state.since_best += 1
    if state.since_best >= optim.plateau_patience and state.decays < optim.plateau_max_decays:
        state.decays, state.since_best = state.decays + 1, 0
        return True
    return False


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} asked for, but CUDA is not available here; use device=auto or cpu")
    return dev


def validate(cfg: DictConfig, world: int = 1) -> None:
    """Catch impossible values before anything is built or written."""
    for key in ("eval_every", "optim.batch_size", "optim.total_steps", "data.eval_batch_size", "optim.splits"):
        value = OmegaConf.select(cfg, key, default=1)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{key}={value!r} must be a positive integer")
    threads = cfg.get("threads")
    if threads is not None and (not isinstance(threads, int) or threads <= 0):
        raise ConfigError(f"threads={threads!r} must be a positive integer or null")
    if not cfg.optim.lr > 0:
        raise ConfigError(f"optim.lr={cfg.optim.lr} must be positive")
    if any(not 0 < m < 1 for m in cfg.optim.milestones):
        raise ConfigError(f"optim.milestones={list(cfg.optim.milestones)} must be fractions of total_steps in (0, 1)")
    schedule = cfg.optim.get("schedule", "milestones")
    if schedule not in ("milestones", "plateau"):
        raise ConfigError(f"optim.schedule={schedule!r}; valid: milestones, plateau")
    if cfg.optim.batch_size % (world * cfg.optim.get("splits", 1)):
        raise ConfigError(f"optim.batch_size={cfg.optim.batch_size} must divide evenly over {world} process(es) "
                          f"x optim.splits={cfg.optim.get('splits', 1)}")


def scale_description(cfg: DictConfig, data_name: str) -> str:
    """'paper protocol' or what was scaled down, recorded in meta.json and shown in the report."""
    paper = PAPER_SCALE[cfg.model.family]
    diffs = []
    if cfg.optim.total_steps != paper["total_steps"]:
        diffs.append(f"{cfg.optim.total_steps} of {paper['total_steps']} iterations (lr schedule compressed "
                     f"proportionally)")
    if cfg.optim.batch_size != paper["batch_size"]:
        diffs.append(f"batch {cfg.optim.batch_size} (paper {paper['batch_size']})")
    width = cfg.model.get("width")
    if width and width != paper["width"]:
        diffs.append(f"width {width} (paper {paper['width']})")
    for key, what in (("train_size", "training"), ("test_size", "test")):
        if cfg.data.get(key):
            diffs.append(f"first {cfg.data[key]} {what} images only")
    if data_name not in ("cifar10", "imagenet"):
        diffs.append(f"data: {data_name}, not the paper's")
    return "paper protocol" if not diffs else "scaled down: " + "; ".join(diffs)


def status_line(name: str, step: int, total: int, lr: float, row: dict, ips: float, eta_s: float) -> str:
    val = f" val_err {row['val_err']:.4f}" if "val_err" in row else ""
    return (f"[{name}] step {step:>6}/{total} ({100 * step / total:5.1f}%) lr {lr:.4g} "
            f"train_err {row['train_err']:.4f} test_err {row['test_err']:.4f}{val} | {ips:,.0f} img/s | "
            f"ETA {eta_s / 60:.1f} min")


def all_reduce(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, fast: Fast,
               sums: torch.Tensor, splits: int = 1) -> None:
    """One SGD step on a batch, in `splits` chunks with their own BN statistics; adds the batch's
    [summed loss, errors, count] into the float64 device tensor `sums` of shape (3,), or into every row of
    one of shape (windows, 3) (no host synchronisation)."""
    opt.zero_grad(set_to_none=True)
    for xs, ys in zip(x.chunk(splits), y.chunk(splits)):
        with fast.autocast(x.device):
            out = model(fast.prepare(xs))
        loss = F.cross_entropy(out.float(), ys)
        (loss / splits).backward()
        sums[..., 0] += loss.detach() * len(ys)
        sums[..., 1] += (out.detach().argmax(1) != ys).sum()
        sums[..., 2] += len(ys)
    opt.step()


def train(cfg: DictConfig, model: torch.nn.Module, src: Source, run_dir: Path | None, fast: Fast, state: State,
          opt: torch.optim.Optimizer, device: torch.device) -> str:
    """The training loop. `run_dir` is None on ranks other than 0 (they write nothing). Returns the
    final status: 'done' or 'diverged'."""
    o = cfg.optim
    writer = MetricsWriter(run_dir / "metrics.csv", columns_for("val" in src.splits)) if run_dir else None
    warm = uses_warmup(o, cfg.model.depth)
    splits = o.get("splits", 1)  # BN statistics over batch/splits images, as on `splits` GPUs (§4.2)
    step_fn = fast.wrap(model)
    # [loss*n, errors, n] over two windows that train_step fills at once: since the last evaluation (sums)
    # and since the last warm-up check (wsums: errors, n; the warm-up window's loss is not used)
    windows = torch.tensor([state.sums, [0.0, *state.wsums]], device=device, dtype=torch.float64)
    sums, wsums = windows[0], windows[1, 1:]
    t0 = t_row = time.perf_counter()
    step_row, name = state.step, display_name(cfg.model.depth, cfg.model.shortcut)
    batches = src.batches(state.step)
    model.train()
    with SignalFlag() as flag:
        while state.step < o.total_steps:
            warming_up = warm and not state.warmup_done
            lr = lr_at(state.step, o, warming_up, state.decays)
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = next(batches)
            train_step(step_fn, opt, x, y, fast, windows, splits)
            state.step += 1
            if warming_up and state.step % o.warmup_check_every == 0:
                # §4.2: "0.01 to warm up the training until the training error is below 80%"; never re-entered
                errs, n = all_reduce(wsums.clone()).tolist()
                wsums.zero_()
                if errs / n < o.warmup_until_err:
                    state.warmup_done = True
                    print(f"[{name}] warm-up done at step {state.step} (train_err {errs / n:.3f} < "
                          f"{o.warmup_until_err}): lr back to the schedule's {lr_at(state.step, o, False, state.decays)}",
                          flush=True)
            if state.step % cfg.eval_every == 0 or state.step == o.total_steps:
                loss_sum, err_sum, n = all_reduce(sums.clone()).tolist()
                row = {"step": state.step, "epoch": round(state.step * o.batch_size / src.train_size, 4), "lr": lr,
                       "train_loss": loss_sum / n, "train_err": err_sum / n}
                for split, fn in src.splits.items():
                    ls, es, ns = all_reduce(fn(getattr(model, "module", model), fast)).tolist()
                    row[f"{split}_loss"], row[f"{split}_err"] = ls / ns, es / ns
                now = time.perf_counter()
                row["wall_time"] = round(state.wall_time + now - t0, 3)
                if writer:
                    writer.write(row)  # row first, then the checkpoint: a kill in between only repeats work
                    fault_point("after_row", state.step)
                sums.zero_()
                ips = (state.step - step_row) * o.batch_size / max(now - t_row, 1e-9)
                if run_dir:
                    print(status_line(name, state.step, o.total_steps, lr, row, ips,
                                      (o.total_steps - state.step) * o.batch_size / max(ips, 1e-9)), flush=True)
                t_row, step_row = now, state.step
                if not math.isfinite(row["train_loss"]):
                    if writer:
                        writer.close()
                    return "diverged"  # a result (plain-110 may do this), not a crash
                if o.get("schedule") == "plateau" and plateau_step(state, row.get("val_err", row["test_err"]), o):
                    print(f"[{name}] error plateaued: lr divided by {1 / o.gamma:g} (drop {state.decays})", flush=True)
                state.wall_time += now - t0
                t0 = now
                state.sums, state.wsums = [0.0, 0.0, 0.0], wsums.tolist()
                if run_dir:
                    save_checkpoint(run_dir / "checkpoint.pt", model, opt, state)
                    fault_point("after_checkpoint", state.step)
            fault_point("raise", state.step)
            if flag.signum is not None:  # preemption: checkpoint mid-interval, then let the signal act
                state.sums, state.wsums = sums.tolist(), wsums.tolist()
                state.wall_time += time.perf_counter() - t0
                if run_dir:
                    save_checkpoint(run_dir / "checkpoint.pt", model, opt, state)
                    writer.close()
                    update_meta(run_dir, status="preempted", preempted_at_step=state.step)
                    print(f"[{name}] signal {flag.signum}: checkpoint saved at step {state.step}; rerun the same "
                          f"command to resume", flush=True)
                flag.pass_on(flag.signum)
    if writer:
        writer.close()
    return "done"


def run_dir_for(cfg: DictConfig, data_name: str) -> Path:
    exp = str(cfg.exp_name).replace("{data}", data_name)
    fp32 = cfg.fast.get("bf16") is False
    return Path(cfg.results_dir) / exp / run_name(data_name, cfg.model.depth, cfg.model.shortcut, cfg.seed, fp32)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; starts the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def run(cfg: DictConfig) -> str:
    """Validate, build, load data, then train into results/<exp>/<run>/ (or skip/resume it)."""
    rank, world, local_rank = distributed()
    validate(cfg, world)
    device = resolve_device(cfg.device, local_rank)
    fast = resolve_fast(cfg.fast, device)
    if fast.cpu_allocator:
        tune_cpu_allocator()
    if cfg.get("threads"):
        torch.set_num_threads(cfg.threads)
    try:  # the architecture first: a bad depth or shortcut fails before any data is read
        arch_for(cfg.model.family, cfg.model.depth, width=cfg.model.get("width"))
        if cfg.model.shortcut not in SHORTCUTS:
            raise ValueError(f"unknown shortcut {cfg.model.shortcut!r}; valid: {', '.join(SHORTCUTS)} (none = plain)")
    except ValueError as e:
        raise ConfigError(f"model: {e}") from None
    src = load_source(cfg, device, rank, world)
    torch.manual_seed(cfg.seed)  # He init from the seed: same seed, same net
    model = build_model(cfg.model.family, cfg.model.depth, cfg.model.shortcut,
                        num_classes=src.num_classes if cfg.model.family == "imagenet" else None,
                        width=cfg.model.get("width"))
    if rank == 0:
        print(f"[data] {src.source}: {src.train_size} train / {src.test_size} test images", flush=True)
    run_dir = run_dir_for(cfg, src.name)
    config = OmegaConf.to_container(cfg, resolve=True)
    config["data"]["name"] = src.name  # what was actually used (the demo may fall back to synthetic)
    mode = prepare_run_dir(run_dir, config, cfg.overwrite) if rank == 0 else "fresh"
    if world > 1:
        modes = [mode]
        dist.broadcast_object_list(modes, src=0)
        mode = modes[0]
    if mode == "skip":
        if rank == 0:
            print(f"[results] {run_dir} is done; skipping (overwrite=true to redo it)", flush=True)
        return "done"
    model = fast.place(model, device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,  # §3.4, §4.2
                          weight_decay=cfg.optim.weight_decay, fused=fast.fused_sgd)
    state = State()
    if mode == "resume" and (run_dir / "checkpoint.pt").exists():
        state = load_checkpoint(run_dir / "checkpoint.pt", model, opt)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        for tmp in run_dir.glob(".*.tmp"):  # half-written files of a process killed mid-write
            tmp.unlink()
        if state.step:
            kept = truncate_metrics(run_dir / "metrics.csv", state.step)
            print(f"[results] resuming {run_dir} at step {state.step} ({kept} rows kept)", flush=True)
        else:
            (run_dir / "metrics.csv").unlink(missing_ok=True)  # rows without a checkpoint cannot be continued
            atomic_write(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(config)).encode())
        rev, dirty = git_revision()
        copy = {}
        if src.name == "cifar10":  # which copy of CIFAR-10: runs on other copies are never pooled with these
            md5 = cifar_fingerprint(cfg.data.root)
            copy = {"data_md5": md5, "data_official": is_official(md5)}
        dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''})"
        update_meta(run_dir, status="running", data=src.name, data_source=src.source, params=count_params(model),
                    device=dev_name + (f" x {world} processes" if world > 1 else ""), torch=torch.__version__,
                    git_revision=rev, git_dirty=dirty, fast=vars(fast), total_steps=cfg.optim.total_steps,
                    scale=scale_description(cfg, src.name), start_time=now_iso(), **copy)
        print(f"[train] {run_dir}: {cfg.model.family} depth {cfg.model.depth} shortcut {cfg.model.shortcut}, "
              f"{count_params(model):,} params, {cfg.optim.total_steps} steps of {cfg.optim.batch_size} on {device}"
              + (f" x {world}" if world > 1 else ""), flush=True)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    out_dir = run_dir if rank == 0 else None
    try:
        status = train(cfg, net, src, out_dir, fast, state, opt, device)
    except torch.cuda.OutOfMemoryError:
        if out_dir and mode == "fresh" and not (run_dir / "checkpoint.pt").exists():
            shutil.rmtree(run_dir)  # nothing was computed: leave results/ as it was
        elif out_dir:
            update_meta(run_dir, status="failed", error="CUDA out of memory", end_time=now_iso())
        raise ConfigError(f"CUDA out of memory at optim.batch_size={cfg.optim.batch_size}; try a smaller batch "
                          f"(e.g. optim.batch_size={max(1, cfg.optim.batch_size // 2)}) or optim.splits=2") from None
    except Exception as e:
        if out_dir:
            update_meta(run_dir, status="failed", error=f"{type(e).__name__}: {e}", end_time=now_iso())
        raise
    if status == "done" and out_dir:
        finish(cfg, model, src, run_dir, device)
    if out_dir:
        update_meta(run_dir, status=status, end_time=now_iso())
        print(f"[train] {run_dir}: {status}", flush=True)
    return status


def finish(cfg: DictConfig, model: torch.nn.Module, src: Source, run_dir: Path, device: torch.device) -> None:
    """Final weights (Fig. 7), per-layer response std on the test set (CIFAR), multi-crop evaluation
    (ImageNet tables); then the checkpoint is no longer needed."""
    if cfg.save_model:
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        atomic_write(run_dir / "model.pt", buf.getvalue())
    if cfg.analyze_responses and src.tensors is not None:
        from .analysis import write_responses

        write_responses(model, src.tensors, run_dir / "responses.csv", cfg.data.eval_batch_size)
    if src.folders is not None and cfg.get("final_crops"):
        import json

        from .imagenet import evaluate_crops

        result = evaluate_crops(model, Path(cfg.data.root), cfg.final_crops, cfg.data.eval_batch_size,
                                cfg.data.get("workers", 4), device)
        atomic_write(run_dir / "final.json", (json.dumps(result, indent=2) + "\n").encode())
        print(f"[train] {cfg.final_crops}-crop evaluation: top-1 {100 * result['top1_err']:.2f}% "
              f"top-5 {100 * result['top5_err']:.2f}%", flush=True)
    (run_dir / "checkpoint.pt").unlink(missing_ok=True)


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


FAILED_MARK = "FAILED"  # in a multirun job's Hydra output folder: this run failed (read by SweepSummary)


def _mark_failed(message: str) -> None:
    from hydra.core.hydra_config import HydraConfig

    out = Path(HydraConfig.get().runtime.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    overrides = " ".join(HydraConfig.get().overrides.task)
    (out / FAILED_MARK).write_text(f"{overrides}\n{message}\n")


class SweepSummary(Callback):
    """After a multirun (any launcher): if runs failed, say which and exit 1, so a script or a CI job
    that launched the sweep notices. The other runs' results are complete either way."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        marks = sorted(Path(config.hydra.sweep.dir).glob(f"*/{FAILED_MARK}"))
        if not marks:
            return
        lines = [m.read_text().splitlines() for m in marks]
        print(f"error: {len(marks)} run(s) of this sweep failed:", file=sys.stderr)
        for overrides, *message in lines:
            print(f"  {overrides}: {' '.join(message)}", file=sys.stderr)
        print("Fix the cause and rerun the same command: finished runs are skipped, interrupted ones resume.",
              file=sys.stderr, flush=True)
        sys.exit(1)


@hydra.main(config_path="../experiments", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> str:
    """One run. Bad input ends it with one clear line (exit 2); in a multirun, a failing run is recorded
    and the sweep goes on with the next one (SweepSummary then exits 1)."""
    multirun = _is_multirun()
    try:
        return run(cfg)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        if not multirun:
            sys.exit(2)
        _mark_failed(str(e))
        return "error"
    except Exception as e:
        if not multirun:
            raise
        print(f"error: run failed ({type(e).__name__}: {e}); continuing with the next run", file=sys.stderr,
              flush=True)
        _mark_failed(f"{type(e).__name__}: {e}")
        return "failed"
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
