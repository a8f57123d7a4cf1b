"""The training step as the loop calls it: eager (every device), or on CUDA the whole step as one CUDA graph
(fast.graph), captured once per learning-rate value and replayed.

A ResNet-56 step at batch 128 is ~800 kernels of a few microseconds each: on a GPU it is bound by launches
and Python, not arithmetic (../shared/docs/gpu.md). The graph holds the whole step — the batch taken from the
device-side draw window (repro.data.BatchStream.take), augmentation, forward, loss, backward, the SGD update
and the running sums — so a step is one replay. What keeps a graphed run's numbers the eager run's:
- the lr is a Python float that fused SGD passes to its kernel, so it is baked into a capture: one capture
  per lr value (the milestones and the warm-up exit are a handful of captures per run), the old one freed;
- the first WARMUP steps run eagerly on a side stream (fused SGD's first step makes the momentum buffers;
  cuDNN's autotuning picks its kernels), and they are real steps: a capture executes nothing, the replay
  that follows it is the step;
- BN's running statistics and counters are updated in place inside the graph, as the eager step does.
Evaluation stays eager (the parameters are the same tensors). Where a graph cannot be used (CPU, DDP, data
from loader workers, torch.compile) the run says why once and steps eagerly.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from repro.data.sources import Source

WARMUP = 3  # eager steps before the first capture


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


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


class EagerStep:
    """The step as kernels launched one by one (every device, every data source)."""

    kind = "eager"

    def __init__(self, t, src: Source, sums: torch.Tensor, splits: int, start: int):
        self.t, self.sums, self.splits = t, sums, splits
        self.no_sync = t.ddp.no_sync if t.ddp is not None else None  # DDP: split chunks all-reduce once per step
        self.batches = src.batches(start)  # the batches of steps start, start+1, ... (step is their position)

    def __call__(self, step: int, lr: float) -> None:
        set_lr(self.t.opt, lr)
        train_step(self.t.step_net, self.t.opt, *next(self.batches), self.sums, self.splits, self.no_sync)


class GraphStep:
    """The whole step as one CUDA graph (module docstring)."""

    kind = "cuda graph"

    def __init__(self, t, src: Source, sums: torch.Tensor, splits: int):
        self.t, self.stream, self.sums, self.splits = t, src.stream, sums, splits
        self.graph: torch.cuda.CUDAGraph | None = None
        self.lr: float | None = None
        self.eager_left = WARMUP
        self.side = torch.cuda.Stream(device=sums.device)
        if torch.are_deterministic_algorithms_enabled():
            # deterministic mode fills every new tensor with NaN (extra kernels in every replay); nothing here
            # reads memory it has not written
            torch.utils.deterministic.fill_uninitialized_memory = False

    def _step(self) -> None:
        x, y = self.stream.take()
        train_step(self.t.step_net, self.t.opt, x, y, self.sums, self.splits)

    def __call__(self, step: int, lr: float) -> None:
        self.stream.prepare(step)  # outside the graph: may upload the next window of draws
        if self.eager_left:
            set_lr(self.t.opt, lr)
            self.side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side):
                self._step()
            torch.cuda.current_stream().wait_stream(self.side)
            self.eager_left -= 1
            return
        if lr != self.lr:
            self.graph = None  # the previous lr's capture (its memory) goes before the next one is made
            set_lr(self.t.opt, lr)
            graph = torch.cuda.CUDAGraph()
            self.t.opt.zero_grad(set_to_none=True)  # the gradients are made inside the capture, in its pool
            with torch.cuda.graph(graph):
                self._step()
            self.graph, self.lr = graph, lr
        self.graph.replay()


def why_not_graph(t, src: Source, device: torch.device) -> str | None:
    """Why this run's step cannot be a CUDA graph, or None when it can."""
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device (this run is on {device.type})"
    if t.ddp is not None:
        return "a data-parallel step all-reduces through DDP's hooks, which a capture would freeze"
    if src.stream is None:
        return "its batches come from loader workers through host copies, not from a device-side draw window"
    if t.step_net is not t.net:
        return "fast.compile is set (torch.compile manages its own graphs)"
    return None


def make_step(t, src: Source, sums: torch.Tensor, splits: int, start: int, device: torch.device,
              name: str) -> EagerStep | GraphStep:
    """The step this run uses: a CUDA graph when fast.graph asks and it can be used, else eager (saying why
    once when a graph was asked for)."""
    if t.graph:
        reason = why_not_graph(t, src, device)
        if reason is None:
            return GraphStep(t, src, sums, splits)
        print(f"[{name}] eager step, not a CUDA graph: {reason}", flush=True)
    return EagerStep(t, src, sums, splits, start)
