"""The training step as the loop calls it: eager (every device), or on CUDA the whole step as one CUDA graph
(fast.graph), captured once per learning-rate value and replayed.

A ResNet-56 step at batch 128 is ~800 kernels of a few microseconds each: on a GPU it is bound by launches
and Python, not arithmetic (../shared/docs/gpu.md). The graph holds the whole step — the batch taken from the
device-side draw window (repro.data.cifar.BatchStream.take), augmentation, forward, loss, backward, the SGD update
and the running sums — so a step is one replay. What keeps a graphed run's numbers the eager run's:
- the lr is a Python float that fused SGD passes to its kernel, so it is baked into a capture: one capture
  per lr value (the milestones and the warm-up exit are a handful of captures per run), the old one freed;
- the first WARMUP steps run eagerly on a side stream (fused SGD's first step makes the momentum buffers;
  cuDNN's autotuning picks its kernels), and they are real steps: a capture executes nothing, the replay
  that follows it is the step;
- BN's running statistics and counters are updated in place inside the graph, as the eager step does;
- each GraphStep captures on a stream of its own, with PyTorch's cuBLAS workspaces cleared before each capture,
  so that every graph owns its workspace (graphs captured on one stream share it: PyTorch issue 193402) and
  the runs of a pack, replayed concurrently on their streams, never race on one or outlive its owner;
- a graph is trusted only after a check (check_graph): at each capture, from the same state, one eager step
  and one replay must agree (bit for bit with deterministic=true, else within GRAPH_RTOL on every parameter's
  and momentum buffer's update, exactly on BN's counters and the draw counter); the state is restored in place
  between them. On a mismatch or a capture error the run says so in one line, records
  `step: "eager (graph check failed: ...)"` in meta.json and steps eagerly from there.
Evaluation stays eager (the parameters are the same tensors). Where a graph cannot be used (CPU, DDP, data
from loader workers, torch.compile) the run says why once and steps eagerly.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn.functional as F

from repro.data.sources import Source
from repro.train.signals import fault_point

WARMUP = 3  # eager steps before the first capture
CHECKED = "cuda graph (checked against the eager step at each capture)"  # meta.json's `step` once trusted
# A graph's step against the eager step from the same state, deterministic=false: cuDNN may pick other kernels
# inside a capture, so float updates may differ in their last bits, never by this much. Set before any GPU run
# of the check (docs/gpus-and-clusters.md); a wrong graph (an update skipped, the lr applied twice, BN frozen)
# moves an update by 100% or more.
GRAPH_RTOL = 0.05


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


def step_tensors(t, sums: torch.Tensor, counter: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Every tensor a training step changes, by name: parameters, BN's running statistics and counters,
    the momentum buffers, the running sums and the draw window's counter."""
    named = {f"param {n}": p for n, p in t.model.named_parameters()}
    named |= {f"buffer {n}": b for n, b in t.model.named_buffers()}
    for n, p in t.model.named_parameters():
        buf = t.opt.state.get(p, {}).get("momentum_buffer")
        if isinstance(buf, torch.Tensor):
            named[f"momentum {n}"] = buf
    named["sums"] = sums
    if counter is not None:
        named["draw counter"] = counter
    return named


def compare_steps(before: dict[str, torch.Tensor], eager: dict[str, torch.Tensor], graph: dict[str, torch.Tensor],
                  exact: bool, rtol: float = GRAPH_RTOL) -> str | None:
    """Why a graph's step is not the eager step from the same state (`before`), or None when it is: integer
    tensors (BN's num_batches_tracked, the draw counter) exactly; float tensors bit for bit when `exact`, else
    each tensor's update (after - before) within `rtol` of the eager update's norm."""
    for name, e in eager.items():
        g, b = graph[name], before[name]
        if not e.is_floating_point() or exact:
            if not torch.equal(e, g):
                return f"{name} differs" + ("" if e.is_floating_point() else f" ({g.tolist()} vs eager {e.tolist()})")
            continue
        step_e, step_g = (e - b).double(), (g - b).double()
        gap, scale = (step_g - step_e).norm().item(), step_e.norm().item()
        if not gap <= rtol * scale + 1e-12:  # also catches NaN
            return f"{name}'s update differs by {gap / max(scale, 1e-30):.2g} of its size (tolerance {rtol:g})"
    return None


def check_graph(state: dict[str, torch.Tensor], eager_step: Callable[[], None], graph_step: Callable[[], None],
                exact: bool) -> str | None:
    """One eager step and one graph step from the same state, compared (compare_steps). The state is left as the
    graph step made it when they agree, as the eager step made it when they do not (so the run goes on from a
    correct step either way); returns the mismatch, or None."""
    def restore(saved: dict[str, torch.Tensor]) -> None:  # in place: the graph's addresses stay
        with torch.no_grad():
            for k, v in state.items():
                v.copy_(saved[k])

    before = {k: v.detach().clone() for k, v in state.items()}
    eager_step()
    eager = {k: v.detach().clone() for k, v in state.items()}
    restore(before)
    graph_step()
    reason = compare_steps(before, eager, {k: v.detach() for k, v in state.items()}, exact)
    if reason is not None:
        restore(eager)
    return reason


class GraphStep:
    """The whole step as one CUDA graph (module docstring). `note(**fields)` records what the step is in
    meta.json once it is known (after the first check)."""

    kind = "cuda graph"

    def __init__(self, t, src: Source, sums: torch.Tensor, splits: int, start: int,
                 note: Callable[..., None] = lambda **fields: None, name: str = ""):
        self.t, self.src, self.stream, self.sums, self.splits = t, src, src.stream, sums, splits
        self.start, self.note, self.name = start, note, name
        self.graph: torch.cuda.CUDAGraph | None = None
        self.lr: float | None = None
        self.eager_left = WARMUP
        self.eager: EagerStep | None = None  # the fallback, after a failed check
        self.side = torch.cuda.Stream(device=sums.device)
        self.capture_stream = torch.cuda.Stream(device=sums.device)  # this graph's own (module docstring)
        if torch.are_deterministic_algorithms_enabled():
            # deterministic mode fills every new tensor with NaN (extra kernels in every replay); nothing here
            # reads memory it has not written
            torch.utils.deterministic.fill_uninitialized_memory = False

    def _step(self) -> None:
        x, y = self.stream.take()
        train_step(self.t.step_net, self.t.opt, x, y, self.sums, self.splits)

    def _eager_on_side(self) -> None:
        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side):
            self._step()
        torch.cuda.current_stream().wait_stream(self.side)

    def _capture(self, step: int) -> torch.cuda.CUDAGraph:
        fault_point("capture", step)  # the tests' forced capture error (REPRO_FAULT=capture:<step>)
        graph = torch.cuda.CUDAGraph()
        self.t.opt.zero_grad(set_to_none=True)  # the gradients are made inside the capture, in its pool
        torch._C._cuda_clearCublasWorkspaces()  # this capture allocates its own cuBLAS workspace, in its pool
        with torch.cuda.graph(graph, stream=self.capture_stream):
            self._step()
        return graph

    def _fall_back(self, step: int, reason: str, first_eager: int) -> None:
        """Eager from step `first_eager` on (`step` itself taken by the check, or not at all)."""
        print(f"[{self.name}] CUDA graph not used: {reason}; stepping eagerly from step {step}", flush=True)
        self.note(step=f"eager (graph check failed: {reason})")
        self.graph, self.kind = None, "eager"
        self.eager = EagerStep(self.t, self.src, self.sums, self.splits, first_eager)

    def __call__(self, step: int, lr: float) -> None:
        if self.eager is not None:
            return self.eager(step, lr)
        self.stream.prepare(step)  # outside the graph: may upload the next window of draws
        if lr == self.lr:  # the replay has this lr baked in
            self.graph.replay()
            return
        set_lr(self.t.opt, lr)  # read by the eager steps and by the capture
        if self.eager_left:
            self._eager_on_side()
            self.eager_left -= 1
            return
        self.graph = None  # the previous lr's capture (its memory) goes before the next one is made
        state = step_tensors(self.t, self.sums, self.stream.pos)
        try:
            graph = self._capture(step)
        except RuntimeError as e:  # a capture error: nothing of this step ran (a capture executes nothing)
            self._fall_back(step, f"capture failed ({str(e).splitlines()[0] if str(e) else type(e).__name__})", step)
            self.eager(step, lr)
            return
        reason = check_graph(state, self._eager_on_side, graph.replay, torch.are_deterministic_algorithms_enabled())
        if reason is not None:  # the state is the eager step's: this step is taken
            self._fall_back(step, reason, step + 1)
            return
        if self.lr is None:
            self.note(step=CHECKED)
        self.graph, self.lr = graph, lr


def bn_counts(model: torch.nn.Module) -> dict[str, int]:
    """Each BN layer's num_batches_tracked (the training batches it has normalised)."""
    return {name: int(m.num_batches_tracked) for name, m in model.named_modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.num_batches_tracked is not None}


def bn_counter_check(model: torch.nn.Module, start: dict[str, int], steps: int, splits: int) -> str | None:
    """The free invariant of a correct step, checked at every evaluation row: since `start` (bn_counts when this
    process began training: a resumed run's checkpoint may come from another split of the batch), each BN layer
    has counted one training batch per chunk per step (evaluation runs in eval mode and counts none). A step that
    skips BN's update (a wrong CUDA graph) breaks it. Why not, or None."""
    for name, n in bn_counts(model).items():
        if n - start[name] != steps * splits:
            return (f"BN layer {name} has counted {n - start[name]} training batches in {steps} steps of {splits} "
                    f"chunk(s), not {steps * splits}")
    return None


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
              name: str, note: Callable[..., None] = lambda **fields: None) -> EagerStep | GraphStep:
    """The step this run uses: a CUDA graph when fast.graph asks and it can be used, else eager (saying why
    once when a graph was asked for). `note(**fields)` records in meta.json what the step is, when known."""
    if t.graph:
        reason = why_not_graph(t, src, device)
        if reason is None:
            return GraphStep(t, src, sums, splits, start, note, name)
        print(f"[{name}] eager step, not a CUDA graph: {reason}", flush=True)
    note(step="eager")
    return EagerStep(t, src, sums, splits, start)
