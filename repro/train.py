"""Train one plain or residual net with the paper's protocol: `python -m repro.train [-m] exp=...`.

A run goes one way: name its folder from the config alone -> skip it (done), reuse it (the same run,
finished by another experiment), resume it or start it -> build the model -> load the data -> train ->
finish. The loop (`train`) is iteration-based, as §4.2 is: the learning rate is a function of the step
(repro.schedule), the batches are a pure function of (seed, step), and running sums stay on the device
until an evaluation point, where one CSV row is written and flushed and then a checkpoint is saved.
Under torchrun the same loop runs data-parallel (DDP): every rank trains on its slice of the global batch,
sums are all-reduced, rank 0 alone writes results.
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import hydra
import torch
import torch.distributed as dist
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from .checkpoint import SignalFlag, State, fault_point, load_checkpoint
from .data import DataError, cifar_fingerprint
from .fast import FastConfigError, resolve_fast, tune_cpu_allocator
from .finish import finish
from .models import build_model, count_params
from .names import display_name, run_name
from .protocol import data_copy, description, identity
from .recorder import Recorder
from .results import ResultsError, read_meta
from .rundir import (RunBusy, RunLock, atomic_write, find_finished, git_revision, prepare_run_dir, reuse_run,
                     truncate_metrics, update_meta)
from .runtime import (ConfigError, all_reduce, broadcast, check_choices, configure_backends, distributed,
                      rank_zero_first, sync_buffers, validate)
from .schedule import lr_at, plateau_step, uses_warmup
from .sources import Source, load_source
from .sweep import is_multirun, mark_failed

USER_ERRORS = (ConfigError, DataError, ResultsError, FastConfigError)
AGREE_EVERY = 10  # data-parallel: steps between the ranks' votes on a preemption signal (a stop within 10 steps)


class PeerLost(Exception):
    """A data-parallel run lost a peer (a rank killed, a collective past dist_timeout_s): one line, exit 1."""


def train_step(net: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               sums: torch.Tensor, splits: int = 1, no_sync=None) -> None:
    """One SGD step on a batch, in `splits` chunks with their own BN statistics (as on `splits` GPUs,
    §4.2); adds the batch's [summed loss, errors, count] into the float64 device tensor `sums` of shape
    (3,), or into every row of one of shape (windows, 3) (no host synchronisation). Under DDP, `no_sync`
    (the wrapper's) keeps the gradients local until the last chunk: one all-reduce per step."""
    opt.zero_grad(set_to_none=True)
    for i, (xs, ys) in enumerate(zip(x.chunk(splits), y.chunk(splits))):
        with no_sync() if no_sync is not None and i < splits - 1 else contextlib.nullcontext():
            out = net(xs)
            loss = F.cross_entropy(out.float(), ys)
            (loss / splits).backward()
        sums[..., 0] += loss.detach() * len(ys)
        sums[..., 1] += (out.detach().argmax(1) != ys).sum()
        sums[..., 2] += len(ys)
    opt.step()


def evaluate(net: torch.nn.Module, src: Source, sums: torch.Tensor, step: int, lr: float, batch_size: int) -> dict:
    """One CSV row at `step`: the training window's mean loss and error (`sums`, all ranks) and each
    evaluation split's, in eval mode, of the model rank 0 saves."""
    sync_buffers(net)
    loss_sum, err_sum, n = all_reduce(sums.clone()).tolist()
    row = {"step": step, "epoch": round(step * batch_size / src.train_size, 4), "lr": lr,
           "train_loss": loss_sum / n, "train_err": err_sum / n}
    for split, fn in src.splits.items():
        ls, es, ns = all_reduce(fn(net)).tolist()
        row[f"{split}_loss"], row[f"{split}_err"] = ls / ns, es / ns
    return row


@dataclass
class Trainee:
    """The net being trained: `model` is the bare net (checkpoints, analyses), `net` the one evaluated (fast
    switches applied), `step_net` the one the training step calls (`net` under DDP when data-parallel,
    compiled when fast.compile asks), `opt` its optimiser, `ddp` the DDP wrapper when data-parallel."""

    model: torch.nn.Module
    net: torch.nn.Module
    step_net: torch.nn.Module
    opt: torch.optim.Optimizer
    ddp: torch.nn.parallel.DistributedDataParallel | None = None


def preempt_now(flag: SignalFlag, step: int, device: torch.device) -> bool:
    """Whether to stop for a preemption signal after this step. Alone: as soon as one came. Data-parallel:
    the ranks get the signal at different steps, and a rank that left alone would leave the others blocked in
    a collective until its timeout, so every AGREE_EVERY steps they vote (the max of their flags) and all
    stop at the same step."""
    if not dist.is_initialized():
        return flag.signum is not None
    if step % AGREE_EVERY:
        return False
    vote = torch.tensor([int(flag.signum is not None)], device=device)
    return bool(all_reduce(vote, dist.ReduceOp.MAX).item())


def train(cfg: DictConfig, t: Trainee, src: Source, state: State, rec: Recorder) -> str:
    """The training loop, from `state` to optim.total_steps. Returns 'done' or 'diverged'."""
    o, name = cfg.optim, display_name(cfg.model.depth, cfg.model.shortcut)
    warm = uses_warmup(o, cfg.model.depth)
    device = next(t.model.parameters()).device
    # [loss*n, errors, n] over two windows train_step fills at once: since the last row (sums) and since the
    # last warm-up check (wsums: errors, n; the warm-up window's loss is not used). A checkpoint holds the
    # sums of all ranks together: rank 0 carries them on, the others start from zero.
    carries = not dist.is_initialized() or dist.get_rank() == 0
    windows = torch.tensor([state.sums, [0.0, *state.wsums]] if carries else [[0.0] * 3] * 2, device=device,
                           dtype=torch.float64)
    sums, wsums = windows[0], windows[1, 1:]
    step_row, batches = state.step, src.batches(state.step)
    no_sync = t.ddp.no_sync if t.ddp is not None else None  # DDP: split chunks all-reduce once per step
    # the reliability tests' fault points (REPRO_FAULT): looked up once, nothing per step in normal use
    faults = ("raise", "kill", "term", "stop", "term_launcher", "kill_launcher") \
        if os.environ.get("REPRO_FAULT") else ()
    t.net.train()
    with SignalFlag() as flag:
        while state.step < o.total_steps:
            warming_up = warm and not state.warmup_done
            lr = lr_at(state.step, o, warming_up, state.decays)
            for g in t.opt.param_groups:
                g["lr"] = lr
            train_step(t.step_net, t.opt, *next(batches), windows, o.splits, no_sync)
            state.step += 1
            if warming_up and state.step % o.warmup_check_every == 0:
                # §4.2: "0.01 to warm up the training until the training error is below 80%"; never re-entered
                errs, n = all_reduce(wsums.clone()).tolist()
                wsums.zero_()
                if errs / n < o.warmup_until_err:
                    state.warmup_done, state.warmup_exit_step = True, state.step
                    rec.note(warmup_exit_step=state.step)
                    print(f"[{name}] warm-up done at step {state.step} (train_err {errs / n:.3f} < "
                          f"{o.warmup_until_err}): lr back to the schedule's {lr_at(state.step, o, False, state.decays)}",
                          flush=True)
            if state.step % cfg.eval_every == 0 or state.step == o.total_steps:
                row = evaluate(t.net, src, sums, state.step, lr, o.batch_size)
                rec.row(row, step_row)
                sums.zero_()
                step_row = state.step
                if not math.isfinite(row["train_loss"]):
                    return "diverged"  # a result (plain-110 may do this), not a crash
                if o.schedule == "plateau" and plateau_step(state, row["val_err"], o):
                    print(f"[{name}] held-out error plateaued: lr divided by {1 / o.gamma:g} (drop {state.decays})",
                          flush=True)
                state.wall_time = rec.elapsed()
                state.sums, state.wsums = [0.0, 0.0, 0.0], all_reduce(wsums.clone()).tolist()
                rec.checkpoint(t, state)
            for fault in faults:
                fault_point(fault, state.step)
            if preempt_now(flag, state.step, device):  # checkpoint mid-interval, then let the signal act
                signum = flag.signum or signal.SIGTERM  # a rank outvoted before its own signal came
                state.sums, state.wsums = all_reduce(sums.clone()).tolist(), all_reduce(wsums.clone()).tolist()
                state.wall_time = rec.elapsed()
                rec.preempted(t, state, signum)
                if dist.is_initialized():
                    dist.barrier()  # no rank leaves before rank 0's checkpoint is on disk
                flag.pass_on(signum)
    return "done"


def run_dir_for(cfg: DictConfig) -> Path:
    """results/<exp>/<run-name>/, from the config alone."""
    return Path(cfg.results_dir) / str(cfg.exp_name) / run_name(
        cfg.data.name, cfg.model.depth, cfg.model.shortcut, cfg.seed, cfg.fast.get("bf16") is False)


def same_data(cfg: DictConfig):
    """Whether another run's data (its config and meta) is this run's: for CIFAR-10 the same md5s where that
    run recorded them (files replaced under the same folder are other data), else the same folder."""
    here: dict = {}

    def check(old: dict, meta: dict) -> bool:
        if cfg.data.name == "cifar10" and meta.get("data_md5"):
            here.setdefault("md5", cifar_fingerprint(cfg.data.root))
            return meta["data_md5"] == here["md5"]
        return Path(old["data"]["root"]).expanduser().resolve() == Path(cfg.data.root).expanduser().resolve()
    return check


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run(cfg: DictConfig) -> str:
    """One run, in one direction (module docstring); returns its status. The process that trains it (rank 0
    under DDP) owns its folder for the run's life (RunLock): a second start of the same run waits up to
    lock_wait_s for the first to let go, then goes on (skips a finished run, resumes an interrupted one) or
    refuses naming the holder."""
    validate(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    rank, world, device = distributed(cfg.device, cfg.dist_timeout_s)
    run_dir = run_dir_for(cfg)
    lock, busy = RunLock(run_dir) if rank == 0 else None, None
    if lock is not None:
        try:
            lock.acquire(cfg.lock_wait_s)
        except RunBusy as e:
            busy = str(e)
    if (busy := broadcast(busy, world)) is not None:
        raise RunBusy(busy)
    try:
        return run_owned(cfg, rank, world, device, run_dir)
    finally:
        if lock is not None:
            lock.release()


def run_owned(cfg: DictConfig, rank: int, world: int, device: torch.device, run_dir: Path) -> str:
    """The run whose folder this process group owns."""
    fast = resolve_fast(cfg.fast, device)
    config = OmegaConf.to_container(cfg, resolve=True)
    arith = "bf16" if fast.bf16 else "fp32"
    mode = prepare_run_dir(run_dir, config, arith, cfg.overwrite, world) if rank == 0 else "fresh"
    origin = find_finished(Path(cfg.results_dir), run_dir, config, arith, same_data(cfg), world) \
        if rank == 0 and mode == "fresh" and not cfg.overwrite else None
    if origin is not None:
        reuse_run(origin, run_dir, config)
        print(f"[results] {run_dir}: the same run (protocol, net, seed) is finished in {origin}; reused it "
              f"instead of training it again", flush=True)
    mode = broadcast("skip" if origin is not None else mode, world)
    if mode == "skip":
        if rank == 0 and origin is None:
            print(f"[results] {run_dir} is done; skipping (overwrite=true to redo it)", flush=True)
        return "done"
    if fast.cpu_allocator:
        tune_cpu_allocator()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    configure_backends(device, cfg.get("deterministic", False))
    with rank_zero_first(world):  # a missing data set is downloaded once, by rank 0
        src = load_source(cfg, device, rank, world)
    torch.manual_seed(cfg.seed)  # He init from the seed: same seed, same net
    model = build_model(cfg.model.family, cfg.model.depth, cfg.model.shortcut, width=cfg.model.width,
                        num_classes=src.num_classes if cfg.model.family == "imagenet" else None)
    net = fast.apply(model, device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,  # §3.4, §4.2
                          weight_decay=cfg.optim.weight_decay, fused=fast.fused_sgd)
    state = State()
    # rank 0 reads the checkpoint and every rank resumes from those bytes: all start from one state
    saved = (run_dir / "checkpoint.pt").read_bytes() if rank == 0 and mode == "resume" and \
        (run_dir / "checkpoint.pt").exists() else None
    if (saved := broadcast(saved, world)) is not None:
        state = load_checkpoint(run_dir / "checkpoint.pt", model, opt, saved)
    if rank == 0:
        start_run_dir(cfg, run_dir, config, state, src, model, fast, world)
    ddp = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else net
    t = Trainee(model, net, fast.compiled(ddp), opt, ddp if world > 1 else None)
    out_dir = run_dir if rank == 0 else None
    rec = Recorder(out_dir, display_name(cfg.model.depth, cfg.model.shortcut), cfg.optim.total_steps,
                   cfg.optim.batch_size, "val" in src.splits, state.wall_time)
    try:
        status = train(cfg, t, src, state, rec)
        rec.close()
    except torch.cuda.OutOfMemoryError:
        if out_dir and mode == "fresh" and not (run_dir / "checkpoint.pt").exists():
            shutil.rmtree(run_dir)  # nothing was computed: leave results/ as it was
            if not any(run_dir.parent.iterdir()):
                run_dir.parent.rmdir()
        elif out_dir:
            update_meta(run_dir, status="failed", error="CUDA out of memory", end_time=now_iso())
        raise ConfigError(f"CUDA out of memory at optim.batch_size={cfg.optim.batch_size}; try a smaller batch "
                          f"(e.g. optim.batch_size={max(1, cfg.optim.batch_size // 2)}) or optim.splits=2") from None
    except Exception as e:
        if out_dir:
            update_meta(run_dir, status="failed", error=f"{type(e).__name__}: {e}", end_time=now_iso())
        if world > 1 and isinstance(e, (dist.DistError, RuntimeError)):
            raise PeerLost(f"{run_dir}: a data-parallel peer was lost or stalled at step {state.step} "
                           f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); the run is marked "
                           f"failed, its checkpoint kept: rerun the same command to resume it") from e
        raise
    if out_dir:
        if status == "done":
            finish(model, src, run_dir, device, save_model=cfg.save_model, analyze_responses=cfg.analyze_responses,
                   final_crops=cfg.final_crops, eval_batch_size=cfg.data.eval_batch_size, workers=cfg.data.get("workers"))
        update_meta(run_dir, status=status, end_time=now_iso())
        print(f"[train] {run_dir}: {status}", flush=True)
    if world > 1:  # the other ranks wait for rank 0's final writes: tearing gloo down under it can abort them
        dist.barrier()
    return status


def start_run_dir(cfg: DictConfig, run_dir: Path, config: dict, state: State, src: Source, model: torch.nn.Module,
                  fast, world: int) -> None:
    """Rank 0: the run folder ready to be written (rows after the checkpoint dropped, or a fresh config), and
    meta.json saying what is running where, on which data and under which protocol. A run is continued only
    on the copy of the data it started on."""
    md5 = src.tensors.md5 if src.tensors is not None else None  # from the bytes the loader read
    started_on = read_meta(run_dir).get("data_md5")
    if state.step and md5 and started_on and started_on != md5:
        raise ResultsError(f"{run_dir} was started on CIFAR-10 ({data_copy(started_on)}), but {cfg.data.root} now "
                           f"holds another copy ({data_copy(md5)}): a run is not continued on other data; point "
                           f"data.root at the files it started on, or rerun with overwrite=true to start afresh")
    print(f"[data] {src.source}: {src.train_size} train / {src.test_size} test images", flush=True)
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
    copy = {"data_md5": md5, "data_copy": data_copy(md5)} if md5 else {}
    threads, params = torch.get_num_threads(), count_params(model)
    device = next(model.parameters()).device
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"cpu ({threads} thread{'s' if threads > 1 else ''})"
    resolved = {"fast": vars(fast), "processes": world, **copy}  # what the protocol reads from meta.json
    scale = description(identity(config, resolved))
    if state.step:  # resumed: config.yaml is the one it started with, and so stays its process count (run_diff
        resolved.pop("processes")  # let it resume here only if the BN chunks, optim.splits x processes, agree)
    warm = {"warmup_exit_step": state.warmup_exit_step} if uses_warmup(cfg.optim, cfg.model.depth) else {}
    update_meta(run_dir, status="running", data=src.name, data_source=src.source, params=params,
                device=where + (f" x {world} processes" if world > 1 else ""), torch=torch.__version__,
                git_revision=rev, git_dirty=dirty, total_steps=cfg.optim.total_steps, start_time=now_iso(),
                scale=scale, **warm, **resolved)
    print(f"[train] {run_dir}: {cfg.model.family} depth {cfg.model.depth} shortcut {cfg.model.shortcut}, "
          f"{params:,} params, {cfg.optim.total_steps} steps of {cfg.optim.batch_size} on "
          f"{where}" + (f" x {world}" if world > 1 else ""), flush=True)


@hydra.main(config_path="../experiments", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> str:
    """One run. Bad input ends it with one clear line (exit 2); in a multirun, a failing run is recorded
    and the sweep goes on with the next one (repro.sweep.SweepSummary then exits 1)."""
    multirun = is_multirun()
    try:
        return run(cfg)
    except (*USER_ERRORS, PeerLost) as e:  # one line: bad input exits 2, a lost data-parallel peer 1
        print(f"error: {e}", file=sys.stderr, flush=True)
        if not multirun:
            sys.exit(1 if isinstance(e, PeerLost) else 2)
        mark_failed(str(e))
        return "failed" if isinstance(e, PeerLost) else "error"
    except Exception as e:
        if not multirun:
            raise
        print(f"error: run failed ({type(e).__name__}: {e}); continuing with the next run", file=sys.stderr,
              flush=True)
        mark_failed(f"{type(e).__name__}: {e}")
        return "failed"
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    if (bad := check_choices(sys.argv[1:], Path(__file__).resolve().parents[1] / "experiments")) is not None:
        print(f"error: {bad}", file=sys.stderr)
        sys.exit(2)
    main()
