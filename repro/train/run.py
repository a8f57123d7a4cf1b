"""One run's life as one object, in one direction: open (own the folder; skip it, reuse it, resume it or
start it) -> start (data, model, optimiser, state, meta.json) -> the loop (`repro.train.loop.train`, which its
caller drives step by step) -> end (finish: weights, analyses; or the failed mark) -> close (the folder let
go). `repro.train.run` drives one run per process; the pack launcher (`repro.train.pack`) drives several in one
process, each still this object with its own folder, CSV, checkpoint and lock.
"""
from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from repro.data.cifar import ImageData, cifar_fingerprint
from repro.data.sources import Source, load_source
from repro.errors import ConfigError, PeerLost, ResultsError, storage_error
from repro.models import build_model, count_params
from repro.names import display_name, run_name
from repro.protocol import IMAGEFOLDER_STREAM, data_copy, description, identity
from repro.results import CHECKPOINT, CONFIG, FINAL, METRICS, MODEL, RESPONSES, read_meta
from repro.train.checkpoint import State, load_checkpoint
from repro.train.fast import Fast, resolve_fast, tune_cpu_allocator
from repro.train.recorder import Recorder
from repro.train.rundir import (
    RunBusy,
    RunLock,
    atomic_write,
    find_finished,
    git_revision,
    prepare_run_dir,
    reuse_run,
    truncate_metrics,
    update_meta,
)
from repro.train.runtime import broadcast, configure_backends, rank_zero_first
from repro.train.schedule import uses_warmup
from repro.train.trackers import open_tracker


@dataclass
class Trainee:
    """The net being trained: `model` is the bare net (checkpoints, analyses), `net` the one evaluated (fast
    switches applied), `step_net` the one the training step calls (`net` under DDP when data-parallel,
    compiled when fast.compile asks), `opt` its optimiser, `ddp` the DDP wrapper when data-parallel, `graph`
    whether the step is asked to run as a CUDA graph (fast.graph, resolved for the device)."""

    model: torch.nn.Module
    net: torch.nn.Module
    step_net: torch.nn.Module
    opt: torch.optim.Optimizer
    ddp: torch.nn.parallel.DistributedDataParallel | None = None
    graph: bool = False


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


class Run:
    """One run (module docstring). The process that trains it (rank 0 under DDP) owns its folder from `open`
    to `close` (RunLock): a second start of the same run waits up to lock_wait_s for the first to let go,
    then goes on (skips a finished run, resumes an interrupted one) or refuses naming the holder."""

    def __init__(self, cfg: DictConfig, rank: int, world: int, device: torch.device):
        self.cfg, self.rank, self.world, self.device = cfg, rank, world, device
        self.dir = run_dir_for(cfg)
        self.out_dir = self.dir if rank == 0 else None  # where this process writes (rank 0 only)
        self.name = display_name(cfg.model.depth, cfg.model.shortcut)
        self.lock: RunLock | None = None
        self.mode = "fresh"
        self.fast: Fast | None = None
        self.config: dict = {}
        self.t: Trainee | None = None
        self.src: Source | None = None
        self.state = State()
        self.rec: Recorder | None = None

    def open(self) -> bool:
        """Own the folder and decide: False when there is nothing to train (done here, or the same run
        finished by another experiment and reused), True to train (mode 'resume' or 'fresh')."""
        cfg, rank, world = self.cfg, self.rank, self.world
        busy = None
        if rank == 0:
            self.lock = RunLock(self.dir)
            try:
                self.lock.acquire(cfg.lock_wait_s)
            except RunBusy as e:
                self.lock, busy = None, str(e)
        if (busy := broadcast(busy, world)) is not None:
            raise RunBusy(busy)
        self.fast = resolve_fast(self.device, **cfg.fast)
        self.config = OmegaConf.to_container(cfg, resolve=True)
        arith = "bf16" if self.fast.bf16 else "fp32"
        mode = prepare_run_dir(self.dir, self.config, arith, cfg.overwrite, world) if rank == 0 else "fresh"
        origin = find_finished(Path(cfg.results_dir), self.dir, self.config, arith, same_data(cfg), world) \
            if rank == 0 and mode == "fresh" and not cfg.overwrite else None
        if origin is not None:
            reuse_run(origin, self.dir, self.config)
            print(f"[results] {self.dir}: the same run (protocol, net, seed) is finished in {origin}; reused it "
                  f"instead of training it again", flush=True)
        self.mode = broadcast("skip" if origin is not None else mode, world)
        if self.mode == "skip" and rank == 0 and origin is None:
            print(f"[results] {self.dir} is done; skipping (overwrite=true to redo it)", flush=True)
        return self.mode != "skip"

    def start(self, data: ImageData | None = None) -> None:
        """Data (or the CIFAR tensors `data`, shared by the runs of a pack), model, optimiser and state (from
        the checkpoint when resuming: rank 0 reads it and every rank resumes from those bytes), meta.json."""
        cfg, rank, world, device, fast = self.cfg, self.rank, self.world, self.device, self.fast
        if fast.cpu_allocator:
            tune_cpu_allocator()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        configure_backends(device, cfg.get("deterministic", False))
        with rank_zero_first(world):  # a missing data set is downloaded once, by rank 0
            self.src = load_source(cfg, device, rank, world, data)
        torch.manual_seed(cfg.seed)  # He init from the seed: same seed, same net
        model = build_model(cfg.model.family, cfg.model.depth, cfg.model.shortcut, width=cfg.model.width,
                            num_classes=self.src.num_classes if cfg.model.family == "imagenet" else None)
        net = fast.apply(model, device)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,  # §3.4, §4.2
                              weight_decay=cfg.optim.weight_decay, fused=fast.fused_sgd)
        checkpoint = self.dir / CHECKPOINT
        saved = checkpoint.read_bytes() if rank == 0 and self.mode == "resume" and checkpoint.exists() else None
        if (saved := broadcast(saved, world)) is not None:
            self.state = load_checkpoint(checkpoint, model, opt, saved)
        if rank == 0:
            self._write_start(model)
        ddp = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None) \
            if world > 1 else net
        self.t = Trainee(model, net, fast.compiled(ddp), opt, ddp if world > 1 else None, fast.graph)
        self.rec = Recorder(self.out_dir, self.name, cfg.optim.total_steps, cfg.optim.batch_size,
                            "val" in self.src.splits, self.state.wall_time)
        if self.out_dir and cfg.get("logger") is not None:
            self.rec.tracker = open_tracker(cfg.logger, self.dir, self.config, self.state.step)

    def _write_start(self, model: torch.nn.Module) -> None:
        """Rank 0: the run folder ready to be written (rows after the checkpoint dropped, or a fresh config), and
        meta.json saying what is running where, on which data and under which protocol. A run is continued only
        on the copy of the data it started on."""
        cfg, run_dir, state, src, world = self.cfg, self.dir, self.state, self.src, self.world
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
            kept = truncate_metrics(run_dir / METRICS, state.step)
            print(f"[results] resuming {run_dir} at step {state.step} ({kept} rows kept)", flush=True)
        else:
            (run_dir / METRICS).unlink(missing_ok=True)  # rows without a checkpoint cannot be continued
            atomic_write(run_dir / CONFIG, OmegaConf.to_yaml(OmegaConf.create(self.config)).encode())
        rev, dirty = git_revision()
        copy = {"data_md5": md5, "data_copy": data_copy(md5)} if md5 else {}
        threads, params = torch.get_num_threads(), count_params(model)
        device = self.device
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
            f"cpu ({threads} thread{'s' if threads > 1 else ''})"
        resolved = {"fast": vars(self.fast), "processes": world, **copy}  # what the protocol reads from meta.json
        if src.folders is not None:
            resolved["data_stream"] = IMAGEFOLDER_STREAM  # which draws (repro.train.rundir.run_key)
        scale = description(identity(self.config, resolved))
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

    def end(self, status: str) -> None:
        """After the loop returned `status` ('done', 'diverged' or 'preempted', whose checkpoint and mark the
        loop wrote): the finished run's weights and analyses, its status."""
        if status != "preempted":  # a preempted run's checkpoint and mark are already on disk (the loop's)
            self.rec.close(final=True)
            if self.out_dir:
                if status == "done":
                    cfg = self.cfg
                    finish(self.t.model, self.src, self.dir, self.device, save_model=cfg.save_model,
                           analyze_responses=cfg.analyze_responses, final_crops=cfg.final_crops,
                           eval_batch_size=cfg.data.eval_batch_size)
                update_meta(self.dir, status=status, end_time=now_iso())
                print(f"[train] {self.dir}: {status}", flush=True)
        if self.world > 1:  # the other ranks wait for rank 0's final writes: tearing gloo down under it can abort them
            dist.barrier()

    def failed(self, e: BaseException) -> BaseException:
        """The loop raised `e`: the run marked failed (its checkpoint kept, so a rerun resumes it), and the
        exception to raise instead: one line for what a user can act on (out of memory, a lost peer)."""
        if isinstance(e, torch.cuda.OutOfMemoryError):
            if self.out_dir and self.mode == "fresh" and not (self.dir / CHECKPOINT).exists():
                if self.rec is not None:
                    self.rec.close()
                shutil.rmtree(self.dir, ignore_errors=True)  # nothing was computed: leave results/ as it was
                if self.dir.parent.exists() and not any(self.dir.parent.iterdir()):
                    self.dir.parent.rmdir()
            else:
                self._mark_failed("CUDA out of memory")
            b = self.cfg.optim.batch_size
            return ConfigError(f"CUDA out of memory at optim.batch_size={b}; try a smaller batch "
                               f"(e.g. optim.batch_size={max(1, b // 2)}) or optim.splits=2")
        if storage_error(e) is not None:  # a full disk mid-run: the checkpoint before it stands
            saved = self.rec.saved_step if self.rec is not None else None
            kept = f"its checkpoint at step {saved} kept" if saved is not None else \
                "its last checkpoint kept" if (self.dir / CHECKPOINT).exists() else "nothing to resume from yet"
            disk = storage_error(e, f"the run is marked failed, {kept}: rerun the same command to resume")
            self._mark_failed(str(disk))
            return disk
        self._mark_failed(f"{type(e).__name__}: {e}")
        if self.world > 1 and isinstance(e, (dist.DistError, RuntimeError)):
            return PeerLost(f"{self.dir}: a data-parallel peer was lost or stalled at step {self.state.step} "
                            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); the run is marked "
                            f"failed, its checkpoint kept: rerun the same command to resume it")
        return e

    def _mark_failed(self, error: str) -> None:
        """meta.json says the run failed and why, where the disk still takes that small write."""
        if self.out_dir:
            try:
                update_meta(self.dir, status="failed", error=error, end_time=now_iso())
            except OSError:
                pass  # the disk refuses even this: the status stays 'running', the checkpoint resumes it

    def close(self) -> None:
        """Let go of the folder and the tracker (idempotent)."""
        if self.rec is not None:
            self.rec.close()
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def finish(model: torch.nn.Module, src: Source, run_dir: Path, device: torch.device, *, save_model: bool,
           analyze_responses: bool, final_crops: int | None, eval_batch_size: int) -> None:
    if save_model:
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        atomic_write(run_dir / MODEL, buf.getvalue())
    if analyze_responses and src.tensors is not None:
        from repro.train.analysis import write_responses

        write_responses(model, src.tensors, run_dir / RESPONSES, eval_batch_size)
    if src.folders is not None and final_crops:
        from repro.data.imagenet import evaluate_crops

        result = evaluate_crops(model, src.folders, final_crops, eval_batch_size, device)
        atomic_write(run_dir / FINAL, (json.dumps(result, indent=2) + "\n").encode())
        print(f"[train] {final_crops}-crop evaluation: top-1 {100 * result['top1_err']:.2f}% "
              f"top-5 {100 * result['top5_err']:.2f}%", flush=True)
    (run_dir / CHECKPOINT).unlink(missing_ok=True)
