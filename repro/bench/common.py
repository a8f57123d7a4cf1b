"""What the bench commands share (`make bench`, `make bench-gpu`, the loader bench): the timing loops, our
net and pipeline and the reference one, the Fig. 6 projection and the JSON writer. The method:
repro/bench/__main__.py."""
from __future__ import annotations

import json
import multiprocessing as mp
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from repro.data.cifar import BatchStream, load_image_data
from repro.models import build_model
from repro.names import display_name
from repro.train.fast import Fast, resolve_fast, tune_cpu_allocator
from repro.train.runtime import configure_backends
from repro.train.step import train_step

CIFAR_NETS = [(20, "A"), (20, "none"), (56, "A"), (56, "none"), (110, "A"), (110, "none")]
SGD = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}  # the paper's SGD (§3.4, §4.2), both pipelines
CONCURRENT_NETS = [(20, None), (44, 8)]  # (depth, width): ResNet-20; the demo's ResNet-44 at width 8


def timed(step, windows: int, steps_per_window: int, warmup: int, sync) -> list[float]:
    """Seconds per step in each timed window (after `warmup` untimed steps)."""
    for _ in range(warmup):
        step()
    sync()
    out = []
    for _ in range(windows):
        t = time.perf_counter()
        for _ in range(steps_per_window):
            step()
        sync()
        out.append((time.perf_counter() - t) / steps_per_window)
    return out


def throughput(step, device: torch.device, batch: int, windows: int, steps: int, warmup: int = 2) -> dict:
    """Images/s of `step` (median window), its windows and this process's peak memory, with the training
    loop's backend settings (TF32 off, cuDNN autotuning on CUDA)."""
    configure_backends(device, deterministic=False)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    secs = timed(step, windows, steps, warmup, sync=(lambda: torch.cuda.synchronize(device)) if cuda else lambda: None)
    return {"images_per_s": batch / statistics.median(secs), "windows_s_per_step": secs, "peak_mb": _peak_mb(device)}


def _peak_mb(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # this process's peak RSS (Linux: KiB)
    except ImportError:
        return None


def write_json(out: Path, report: dict) -> None:
    """A bench's report as JSON at `out` (folders made; values JSON cannot hold, e.g. a dtype, as text)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")


def isolated(fn, *args, **kwargs):
    """fn(*args, **kwargs) in a fresh (spawned, non-daemonic: it may start loader workers) process."""
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def our_fast(device: torch.device, apply: bool = True, **overrides) -> Fast:
    """The `fast=auto` switches for `device`, with `overrides` (e.g. bf16=False); `apply` sets the
    process-wide ones (the CPU allocator) in this process, as `repro.train.run` does."""

    fast = resolve_fast(device, **{"compile": False, **overrides})
    if apply and fast.cpu_allocator:
        tune_cpu_allocator()
    return fast


def our_net(fast: Fast, device: torch.device, family: str, depth: int, shortcut: str, **kwargs):
    """A seeded net placed as the training loop places it, its SGD and a sums accumulator."""
    torch.manual_seed(0)
    model = build_model(family, depth, shortcut, **kwargs)
    net = fast.apply(model, device)
    opt = torch.optim.SGD(model.parameters(), **SGD, fused=fast.fused_sgd)
    return net, opt, torch.zeros(3, dtype=torch.float64, device=device)


def measure_ours(cifar: Path, depth: int, shortcut: str, device: torch.device, batch: int, windows: int,
                 steps: int, threads: int | None = None, width: int | None = None, **overrides) -> dict:
    if threads:
        torch.set_num_threads(threads)
    fast = our_fast(device, **overrides)
    data = load_image_data(device, name="cifar10", root=cifar)
    model, opt, sums = our_net(fast, device, "cifar10", depth, shortcut, width=width)
    step_net = fast.compiled(model)  # as the loop's Trainee.step_net
    stream = BatchStream(data, batch, seed=0)
    it = iter(range(10**9))

    def step():
        x, y = stream.batch(next(it))
        train_step(step_net, opt, x, y, sums)

    warmup = 5 if fast.compile else 2  # compiling, and CUDA graphs' recording, happen in the first steps
    return {**throughput(step, device, batch, windows, steps, warmup), "fast": vars(fast)}


def torchvision_cifar10(root: Path, transform):
    """torchvision's CIFAR10 reader without its md5 checks (re-encoded copies and the embedded task written
    in the same format are fine; class names are not needed to measure throughput)."""
    import torchvision

    class CIFAR10Offline(torchvision.datasets.CIFAR10):
        def _check_integrity(self) -> bool:
            return True

        def _load_meta(self) -> None:
            self.classes = [f"class{i}" for i in range(10)]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return CIFAR10Offline(str(root), train=True, download=False, transform=transform)


def measure_reference(cifar: Path, depth: int, shortcut: str, device: torch.device, batch: int, windows: int,
                      steps: int, workers: int = 2) -> dict:
    """The standard way: PIL transforms in DataLoader workers, eager fp32 NCHW model."""
    import torch.nn.functional as F
    import torchvision.transforms as T
    from torch.utils.data import DataLoader

    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))])
    ds = torchvision_cifar10(cifar.parent if cifar.name == "cifar-10-batches-py" else cifar, tf)
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                        multiprocessing_context="fork" if workers and "fork" in mp.get_all_start_methods() else None)
    torch.manual_seed(0)
    model = build_model("cifar10", depth, shortcut).to(device)
    opt = torch.optim.SGD(model.parameters(), **SGD)
    batches = iter(loader)

    def step():
        nonlocal batches
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()  # common reproductions log the loss every step (a host sync)

    return {**throughput(step, device, batch, windows, steps), "workers": workers}


def measure_imagenet(root: Path | None, depth: int, device: torch.device, batch: int, windows: int, steps: int,
                     decoder: str = "auto", decode: str = "cpu", workers="auto") -> dict:
    """Our ImageNet path end to end: loader workers (repro.data.imagenet: uint8 crops, or bytes for data.decode=cuda)
    and the device tail feeding the training step, or (no folder given) synthetic 224x224 tensors, which
    measures the model alone."""
    from repro.data.imagenet import LIGHTING_STD, decode_batch_on_device, load_imagefolder, tail, train_loader

    fast = our_fast(device)
    model, opt, sums = our_net(fast, device, "imagenet", depth, "A", num_classes=1000)
    if root is not None:
        data = load_imagefolder(name="imagenet", root=root, decoder=decoder, decode=decode, workers=workers)
        batches = iter(train_loader(data, batch, 0, 0, 10**6, data.workers))

        def next_batch():
            b = next(batches)
            x, alpha, y = decode_batch_on_device(b, device, data.decoder) if decode == "cuda" else b
            return tail(x, alpha, LIGHTING_STD, device), y.to(device, non_blocking=True)
        source = f"{data.source}, {data.workers} workers"
    else:
        x0, y0 = torch.randn(batch, 3, 224, 224, device=device), torch.randint(0, 1000, (batch,), device=device)
        next_batch = lambda: (x0, y0)  # noqa: E731
        source = "synthetic tensors (model only)"

    def step():
        x, y = next_batch()
        train_step(model, opt, x, y, sums)

    return {**throughput(step, device, batch, windows, steps, warmup=1), "data": source, "fast": vars(fast)}


def measure_concurrent(cifar: Path, depth: int, width: int | None, procs: int, batch: int, windows: int,
                       steps: int) -> dict:
    """CPU: `procs` runs at once, one thread each (how the demo and `make cifar` run small nets) —
    the aggregate throughput, against one run using every thread, measured just before."""
    cpu = torch.device("cpu")
    single = isolated(measure_ours, cifar, depth, "A", cpu, batch, windows, steps, width=width)["images_per_s"]
    with ProcessPoolExecutor(procs, mp_context=mp.get_context("spawn")) as pool:
        jobs = [pool.submit(measure_ours, cifar, depth, "A", cpu, batch, windows, steps, threads=1, width=width)
                for _ in range(procs)]
        rates = [j.result()["images_per_s"] for j in jobs]
    return {"net": display_name(depth, "A") + (f" width {width}" if width else ""), "processes": procs,
            "threads_each": 1, "aggregate_images_per_s": sum(rates), "per_process": rates,
            "one_process_all_threads": single, "vs_one_process": sum(rates) / single}


def tflops(images_per_s: float, macs: int) -> float:
    return images_per_s * 6 * macs / 1e12


FIG6_NETS = [(d, "none") for d in (20, 32, 44, 56)] + [(d, "A") for d in (20, 32, 44, 56, 110)]  # §4.2, Fig. 6
FIG6_IMAGES = 64_000 * 128  # iterations x mini-batch per net (§4.2)


def sec_per_image(images_per_s: dict[tuple[int, str], float], depth: int, shortcut: str) -> float | None:
    """Seconds per trained image of (depth, shortcut) from measured throughputs ((depth, shortcut) -> images/s).
    They grow linearly with depth (every stage adds the same blocks), so a depth not measured is interpolated
    (or extrapolated) on the line through the measured depths of the same shortcut; None with fewer than 2."""
    points = sorted((d, 1 / rate) for (d, s), rate in images_per_s.items() if s == shortcut)
    if len(points) < 2:
        return None
    (d0, t0), (d1, t1) = next(((a, b) for a, b in zip(points, points[1:]) if depth <= b[0]), points[-2:])
    return t0 + (t1 - t0) * (depth - d0) / (d1 - d0)


def project_fig6(images_per_s: dict[tuple[int, str], float]) -> dict | None:
    """Hours for the Fig. 6 sweep run one net after another at the measured throughputs (sec_per_image)."""
    hours = {}
    for depth, sc in FIG6_NETS:
        if (per := sec_per_image(images_per_s, depth, sc)) is None:
            return None
        hours[display_name(depth, sc)] = FIG6_IMAGES * per / 3600
    return {"per_net_hours": hours, "sequential_hours": sum(hours.values()),
            "note": "projected from this run's throughputs; 32/44 interpolated by depth; excludes evaluations"}


ABLATION_NETS = [(20, "A"), (56, "A")]  # the two nets issue 6 sets targets for
ABLATION = [  # our fast path with its parts switched off one after another (CPU and CUDA alike)
    ("bf16 off", {"bf16": False}),
    ("bf16, cpu_allocator off", {"bf16": False, "cpu_allocator": False}),
    ("all fast switches off (our data path + eager fp32 NCHW)",
     {"bf16": False, "cpu_allocator": False, "channels_last": False, "fused_sgd": False}),
]
CUDA_ABLATION = [("fast.compile=reduce-overhead (CUDA graphs)", {"compile": "reduce-overhead"})]  # CUDA only


def parse_nets(text: str) -> list[tuple[int, str]]:
    """'20A,56none' -> [(20, 'A'), (56, 'none')]."""
    nets = []
    for item in filter(None, text.split(",")):
        depth = item.rstrip("ABCnoe")
        if not depth.isdigit() or item[len(depth):] not in ("A", "B", "C", "none"):
            raise SystemExit(f"error: --nets item {item!r}; write depth then shortcut, e.g. 20A or 56none")
        nets.append((int(depth), item[len(depth):]))
    return nets




