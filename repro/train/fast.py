"""Speed switches that do not change the experiment — the `fast` config group, resolved for a device.

Each switch is measured by `make bench` (repro.bench) and checked against the plain fp32 path by
tests/test_fidelity.py. 'auto' turns a switch on where it was measured to help:

- channels_last: NHWC activations; oneDNN (CPU) and cuDNN (CUDA) run faster convolutions in it.
- bf16: autocast convolutions and the classifier to bfloat16 on CUDA, and on CPUs with native bf16
  instructions (AVX512-BF16 or AMX); BN statistics and parameters, the loss and the weights stay fp32.
- fused_sgd: one fused update for all parameters instead of a loop over tensors (same arithmetic).
- cpu_allocator: keep freed activations in the heap instead of handing them back to the OS (below).
- compile: torch.compile the model; 'reduce-overhead' captures it as CUDA graphs (launch-bound small nets).
- graph: the whole training step (batch, forward, backward, SGD update) as one CUDA graph (repro.train.step);
  'auto' = on CUDA. A run that cannot use one (DDP, loader-worker data, compile) says so and steps eagerly.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
from dataclasses import dataclass

import torch

from repro.errors import ConfigError

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class Fast:
    channels_last: bool = False
    bf16: bool = False
    compile: str | None = None  # None (eager) or one of COMPILE_MODES
    fused_sgd: bool = False
    cpu_allocator: bool = False
    graph: bool = False

    def apply(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """`model` on `device` (weights in channels_last when asked), wrapped so that its forward does the
        rest (channels_last inputs, bf16 autocast). The switches are applied here once: the loop, the
        evaluation and the bench call the returned module like any other. Its parameters are `model`'s;
        checkpoints and analyses use `model` itself."""
        fmt = torch.channels_last if self.channels_last else torch.preserve_format
        model = model.to(device, memory_format=fmt)
        return Accelerated(model, self.channels_last, self.bf16) if self.channels_last or self.bf16 else model

    def compiled(self, net: torch.nn.Module) -> torch.nn.Module:
        """The module the training step calls: `net` compiled when fast.compile asks (same parameters)."""
        return torch.compile(net, mode=self.compile) if self.compile else net


class Accelerated(torch.nn.Module):
    """A model whose inputs go in as channels_last and whose forward runs under bf16 autocast (convolutions
    and the classifier in bf16; BN statistics and parameters stay fp32). Outputs may be bf16."""

    def __init__(self, net: torch.nn.Module, channels_last: bool, bf16: bool):
        super().__init__()
        self.net, self.channels_last, self.bf16 = net, channels_last, bf16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, torch.bfloat16) if self.bf16 else contextlib.nullcontext():
            return self.net(x)


def native_bf16(device: torch.device) -> bool:
    """Whether bfloat16 arithmetic runs in hardware here (emulated bf16 is slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return False


def _switch(key: str, value, auto: bool) -> bool:
    if value == "auto":
        return auto
    if isinstance(value, bool):
        return value
    raise ConfigError(f"fast.{key}={value!r}; valid: auto, true, false")


def resolve_fast(device: torch.device, *, channels_last="auto", bf16="auto", fused_sgd="auto", cpu_allocator="auto",
                 compile=False, graph="auto") -> Fast:
    """The switches for `device` (the `fast` config group's keys: `resolve_fast(dev, **cfg.fast)`); 'auto' = on
    where `make bench` measured it to help."""
    mode = compile
    if mode is True:
        mode = "default"
    if mode not in (False, None, *COMPILE_MODES):
        raise ConfigError(f"fast.compile={mode!r}; valid: false, true, {', '.join(COMPILE_MODES)}")
    return Fast(channels_last=_switch("channels_last", channels_last, True),
                bf16=_switch("bf16", bf16, native_bf16(device)),
                compile=mode or None,
                fused_sgd=_switch("fused_sgd", fused_sgd, device.type in ("cuda", "cpu")),
                cpu_allocator=_switch("cpu_allocator", cpu_allocator, device.type == "cpu" and sys.platform == "linux"),
                graph=_switch("graph", graph, device.type == "cuda"))


def tune_cpu_allocator() -> bool:
    """Keep freed memory in the process heap (glibc malloc). By default glibc serves every block over
    128 KiB-32 MiB with its own mmap and returns it with munmap on free, so each training step on the CPU
    page-faults its ~8 MB activations back in, zero-filled (tests/test_fidelity.py counts the faults; the
    gain in a full training step is small and varies: make bench's ablation rows, docs/performance.md).
    jemalloc and tcmalloc avoid this too (PyTorch's CPU performance guide suggests them); these two mallopt
    calls do it without a preload. Process-wide, numerically inert; the cost is that the process keeps its
    peak heap. Returns whether it applied (False off glibc)."""
    name = ctypes.util.find_library("c")
    if sys.platform != "linux" or not name:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt"):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h; the mmap threshold first (32 MiB is its maximum):
    # a fixed trim threshold alone also freezes the mmap threshold at 128 KiB, which is slower still
    return bool(libc.mallopt(m_mmap_threshold, 32 * 2**20)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
