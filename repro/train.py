"""Train one plain or residual net with the paper's protocol: `python -m repro.train [-m] exp=...`.

The loop is a visible function (`train`), iteration-based as §4.2 is: the learning rate is a pure
function of the step (`lr_at`), the batches are a pure function of (seed, step) (data.BatchStream), and
running sums stay on the device until an evaluation point, where one CSV row is written and flushed and
a checkpoint is saved. Re-running the same command resumes from that checkpoint.
"""
from __future__ import annotations

import io
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import hydra
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from .data import BatchStream, DataError, ImageData, load_image_data, normalize
from .models import build_model, count_params
from .names import run_name
from .results import (MetricsWriter, ResultsError, atomic_write, columns_for, git_revision, prepare_run_dir,
                      truncate_metrics, update_meta)


class ConfigError(Exception):
    """A config value that cannot work; the message names it and the fix."""


USER_ERRORS = (ConfigError, DataError, ResultsError)


def lr_at(step: int, optim: DictConfig | dict, warming_up: bool = False) -> float:
    """Learning rate for iteration `step` (0-based): base lr divided by 1/gamma at each milestone
    (fractions of total_steps), or warmup_lr while warming up (§4.2)."""
    if warming_up:
        return float(optim["warmup_lr"])
    passed = sum(step >= round(m * optim["total_steps"]) for m in optim["milestones"])
    return float(f"{optim['lr'] * optim['gamma'] ** passed:.12g}")  # 0.001, not 0.0010000000000000002


def uses_warmup(optim: DictConfig, depth: int) -> bool:
    start = optim.get("warmup_from_depth")
    return optim.get("warmup_lr") is not None and (start is None or depth >= start)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} asked for, but CUDA is not available here; use device=auto or cpu")
    return dev


def validate(cfg: DictConfig) -> None:
    """Catch impossible values before anything is built or written."""
    for key in ("eval_every", "optim.batch_size", "optim.total_steps", "data.eval_batch_size"):
        value = OmegaConf.select(cfg, key)
        if not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{key}={value!r} must be a positive integer")
    if not cfg.optim.lr > 0:
        raise ConfigError(f"optim.lr={cfg.optim.lr} must be positive")
    if any(not 0 < m < 1 for m in cfg.optim.milestones):
        raise ConfigError(f"optim.milestones={list(cfg.optim.milestones)} must be fractions of total_steps in (0, 1)")


@dataclass
class FastPath:
    """Speed switches, resolved for the device ('auto' -> on where measured to help)."""

    channels_last: bool = False
    bf16: bool = False
    compile: bool = False

    @classmethod
    def resolve(cls, cfg: DictConfig, device: torch.device) -> "FastPath":
        cuda = device.type == "cuda"
        pick = lambda v, auto: auto if v == "auto" else bool(v)  # noqa: E731
        return cls(pick(cfg.channels_last, cuda), pick(cfg.bf16, cuda), bool(cfg.compile))


@dataclass
class State:
    """Everything a resumed run needs besides model and optimiser (which sit in the checkpoint too)."""

    step: int = 0
    warmup_done: bool = False
    wall_time: float = 0.0  # training seconds before this process started
    sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # loss*n, errors, n since last row


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, mean: torch.Tensor, batch_size: int,
             fast: FastPath) -> tuple[float, float]:
    """(mean loss, top-1 error) over a whole split, eval mode, original view (§4.2)."""
    model.eval()
    sums = torch.zeros(2, device=x.device, dtype=torch.float64)
    with torch.no_grad(), torch.autocast(x.device.type, torch.bfloat16, enabled=fast.bf16):
        for i in range(0, len(x), batch_size):
            xb = normalize(x[i : i + batch_size], mean)
            if fast.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            out = model(xb).float()
            yb = y[i : i + batch_size]
            sums += torch.stack([F.cross_entropy(out, yb, reduction="sum"), (out.argmax(1) != yb).sum()])
    model.train()
    loss, err = (sums / len(x)).tolist()
    return loss, err


class Preempted(Exception):
    def __init__(self, signum: int):
        self.signum = signum


class SignalFlag:
    """SIGTERM/SIGUSR1/SIGUSR2 (what SLURM and submitit send before a kill) set a flag the loop checks
    once per step; the loop then checkpoints and hands the signal on to whoever handled it before."""

    SIGNALS = tuple(s for s in (signal.SIGTERM, getattr(signal, "SIGUSR1", None), getattr(signal, "SIGUSR2", None)) if s)

    def __init__(self):
        self.signum: int | None = None
        self.previous = {}

    def __enter__(self) -> "SignalFlag":
        if hasattr(signal, "SIGUSR1"):
            for s in self.SIGNALS:
                self.previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for s, h in self.previous.items():
            signal.signal(s, h)

    def pass_on(self, signum: int) -> None:
        """Restore the previous handler and re-deliver the signal (submitit requeues on USR2; SLURM's
        default SIGTERM ends the job), then exit 128+signum if the process is still alive."""
        self.__exit__()
        signal.raise_signal(signum)
        sys.exit(128 + signum)


def save_checkpoint(path: Path, model, opt, state: State) -> None:
    payload = {
        "model": model.state_dict(), "optimizer": opt.state_dict(), "step": state.step,
        "warmup_done": state.warmup_done, "wall_time": state.wall_time, "sums": list(state.sums),
        "torch_rng": torch.get_rng_state(),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write(path, buf.getvalue())


def load_checkpoint(path: Path, model, opt) -> State:
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)  # safe: tensors and plain data only
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
    except Exception as e:
        raise ResultsError(f"cannot resume from {path} ({type(e).__name__}: {e}); move it aside or "
                           f"rerun with overwrite=true to start the run afresh") from None
    torch.set_rng_state(ck["torch_rng"])
    return State(ck["step"], ck["warmup_done"], ck["wall_time"], list(ck["sums"]))


def status_line(step: int, total: int, lr: float, row: dict, ips: float, eta_s: float) -> str:
    val = f" val_err {row['val_err']:.4f}" if "val_err" in row else ""
    return (f"step {step:>6}/{total} ({100 * step / total:5.1f}%) lr {lr:.4g} train_err {row['train_err']:.4f} "
            f"test_err {row['test_err']:.4f}{val} | {ips:,.0f} img/s | ETA {eta_s / 60:.1f} min")


def train(cfg: DictConfig, model: torch.nn.Module, data: ImageData, run_dir: Path, fast: FastPath,
          state: State, opt: torch.optim.Optimizer) -> str:
    """The training loop. Returns the final status: 'done' or 'diverged'."""
    o, device = cfg.optim, data.train_x.device
    stream = BatchStream(data, o.batch_size, cfg.seed)
    columns = columns_for(data.val_x is not None)
    writer = MetricsWriter(run_dir / "metrics.csv", columns)
    warm = uses_warmup(o, cfg.model.depth)
    step_fn = torch.compile(model) if fast.compile else model
    sums = torch.tensor(state.sums, device=device, dtype=torch.float64)  # loss*n, errors, n
    wsums = torch.zeros(2, device=device, dtype=torch.float64)  # warm-up window: errors, n
    t0, t_row, step_row = time.perf_counter(), time.perf_counter(), state.step
    model.train()
    with SignalFlag() as flag:
        while state.step < o.total_steps:
            warming_up = warm and not state.warmup_done
            lr = lr_at(state.step, o, warming_up)
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = stream.batch(state.step)
            if fast.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, torch.bfloat16, enabled=fast.bf16):
                out = step_fn(x)
            loss = F.cross_entropy(out.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            wrong = (out.detach().argmax(1) != y).sum()
            sums += torch.stack([loss.detach() * len(y), wrong, torch.tensor(len(y), device=device)])
            state.step += 1
            if warming_up:  # §4.2: warm up "until the training error is below 80%"; never re-entered
                wsums += torch.stack([wrong.double(), torch.tensor(float(len(y)), device=device)])
                if state.step % o.warmup_check_every == 0:
                    err = (wsums[0] / wsums[1]).item()
                    wsums.zero_()
                    if err < o.warmup_until_err:
                        state.warmup_done = True
                        print(f"[train] warm-up done at step {state.step} (train_err {err:.3f} < "
                              f"{o.warmup_until_err}): lr back to {o.lr}", flush=True)
            if state.step % cfg.eval_every == 0 or state.step == o.total_steps:
                loss_sum, err_sum, n = sums.tolist()
                row = {"step": state.step, "epoch": round(stream.epoch(state.step), 4), "lr": lr,
                       "train_loss": loss_sum / n, "train_err": err_sum / n}
                row["test_loss"], row["test_err"] = evaluate(model, data.test_x, data.test_y, data.mean,
                                                             cfg.data.eval_batch_size, fast)
                if data.val_x is not None:
                    row["val_loss"], row["val_err"] = evaluate(model, data.val_x, data.val_y, data.mean,
                                                               cfg.data.eval_batch_size, fast)
                now = time.perf_counter()
                row["wall_time"] = round(state.wall_time + now - t0, 3)
                writer.write(row)  # row first, then the checkpoint: a kill in between only repeats work
                sums.zero_()
                state.sums = [0.0, 0.0, 0.0]
                ips = (state.step - step_row) * o.batch_size / max(now - t_row, 1e-9)
                print(status_line(state.step, o.total_steps, lr, row, ips,
                                  (o.total_steps - state.step) * o.batch_size / max(ips, 1e-9)), flush=True)
                t_row, step_row = now, state.step
                if not math.isfinite(row["train_loss"]):
                    writer.close()
                    return "diverged"  # a result (plain-110 may do this), not a crash
                state.wall_time += now - t0
                t0 = now
                save_checkpoint(run_dir / "checkpoint.pt", model, opt, state)
            if flag.signum is not None:  # preemption: checkpoint mid-interval, then let the signal act
                state.sums = sums.tolist()
                state.wall_time += time.perf_counter() - t0
                save_checkpoint(run_dir / "checkpoint.pt", model, opt, state)
                writer.close()
                update_meta(run_dir, status="preempted", preempted_at_step=state.step)
                print(f"[train] signal {flag.signum}: checkpoint saved at step {state.step}; rerun to resume",
                      flush=True)
                flag.pass_on(flag.signum)
    writer.close()
    return "done"


def run_dir_for(cfg: DictConfig, data_name: str) -> Path:
    exp = str(cfg.exp_name).replace("{data}", data_name)
    return Path(cfg.results_dir) / exp / run_name(data_name, cfg.model.depth, cfg.model.shortcut, cfg.seed)


def run(cfg: DictConfig) -> str:
    """Validate, build, load data, then train into results/<exp>/<run>/ (or skip/resume it)."""
    validate(cfg)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)  # He init from the seed: same seed, same net
    try:
        model = build_model(cfg.model.family, cfg.model.depth, cfg.model.shortcut, width=cfg.model.get("width"))
    except ValueError as e:
        raise ConfigError(f"model: {e}") from None
    data = load_image_data(cfg.data, device)
    print(f"[data] {data.source}: {len(data.train_x)} train / {len(data.test_x)} test images", flush=True)
    run_dir = run_dir_for(cfg, data.name)
    config = OmegaConf.to_container(cfg, resolve=True)
    config["data"]["name"] = data.name  # what was actually used (the demo may fall back to synthetic)
    mode = prepare_run_dir(run_dir, config, cfg.overwrite)
    if mode == "skip":
        print(f"[results] {run_dir} is done; skipping (overwrite=true to redo it)", flush=True)
        return "done"
    fast = FastPath.resolve(cfg.fast, device)
    model = model.to(device, memory_format=torch.channels_last if fast.channels_last else torch.preserve_format)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                          weight_decay=cfg.optim.weight_decay)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = State()
    if mode == "resume" and (run_dir / "checkpoint.pt").exists():
        state = load_checkpoint(run_dir / "checkpoint.pt", model, opt)
        kept = truncate_metrics(run_dir / "metrics.csv", state.step)
        print(f"[results] resuming {run_dir} at step {state.step} ({kept} rows kept)", flush=True)
    else:
        (run_dir / "metrics.csv").unlink(missing_ok=True)  # rows without a checkpoint cannot be continued
        atomic_write(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(config)).encode())
    rev, dirty = git_revision()
    params = count_params(model)
    update_meta(run_dir, status="running", data=data.name, data_source=data.source, params=params,
                device=torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
                torch=torch.__version__, git_revision=rev, git_dirty=dirty, fast=vars(fast),
                total_steps=cfg.optim.total_steps, start_time=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    print(f"[train] {run_dir}: {cfg.model.family} depth {cfg.model.depth} shortcut {cfg.model.shortcut}, "
          f"{params:,} params, {cfg.optim.total_steps} steps of {cfg.optim.batch_size} on {device}", flush=True)
    try:
        status = train(cfg, model, data, run_dir, fast, state, opt)
    except torch.cuda.OutOfMemoryError:
        update_meta(run_dir, status="failed", error="CUDA out of memory")
        raise ConfigError(f"CUDA out of memory at optim.batch_size={cfg.optim.batch_size}; try a smaller batch "
                          f"(e.g. optim.batch_size={max(1, cfg.optim.batch_size // 2)}) or another GPU") from None
    except Exception as e:
        update_meta(run_dir, status="failed", error=f"{type(e).__name__}: {e}",
                    end_time=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        raise
    if status == "done":
        finish(cfg, model, data, run_dir, fast)
    update_meta(run_dir, status=status, end_time=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    print(f"[train] {run_dir}: {status}", flush=True)
    return status


def finish(cfg: DictConfig, model, data: ImageData, run_dir: Path, fast: FastPath) -> None:
    """Final weights (for Fig. 7) and the per-layer response std on the test set."""
    if cfg.save_model:
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        atomic_write(run_dir / "model.pt", buf.getvalue())
    if cfg.analyze_responses:
        from .analysis import write_responses

        write_responses(model, data, run_dir / "responses.csv", cfg.data.eval_batch_size)
    (run_dir / "checkpoint.pt").unlink(missing_ok=True)  # the run is complete; model.pt has the weights


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(config_path="../experiments", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> str:
    """One run. Bad input ends it with one clear line (exit 2); in a multirun, a failing run is recorded
    and the sweep goes on to the next one."""
    multirun = _is_multirun()
    try:
        return run(cfg)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        if not multirun:
            sys.exit(2)
        return "error"
    except Exception as e:
        if not multirun:
            raise
        print(f"error: run failed ({type(e).__name__}: {e}); continuing with the next run", file=sys.stderr, flush=True)
        return "failed"


if __name__ == "__main__":
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    main()
