"""`make bench`: end-to-end training throughput of our pipeline against a reference pipeline written
the standard way, measured in the same run, on the current device. Writes plots/bench.json.

Ours:      the whole data set as uint8 on the device, batched augmentation, and the `fast` switches as
           `fast=auto` resolves them here (repro/fast.py: channels_last, bf16 where the hardware has it,
           fused SGD, the CPU allocator setting); `train_step` is the very function the training loop calls.
Reference: torchvision's CIFAR10 dataset + DataLoader (2 workers) with PIL transforms + an eager fp32
           NCHW model and a plain SGD loop — the way common reproductions are written.
Every measurement runs in a fresh process (its own allocator state, threads and peak memory), one after
the other; the ablation rows switch our fast path's parts off one at a time (and, on CUDA, add
fast.compile=reduce-overhead). fp32 is true fp32 everywhere: TF32 off, as in training (repro.runtime).
Throughput = images/s over data + augmentation + forward + backward + step, median of several timed
windows after warm-up. Effective TFLOP/s uses 6 x the paper's per-image multiply-adds per trained image
(paper.md "Compute": a training step costs ~3 forward passes of 2 FLOPs per multiply-add).

    python -m repro.bench [--cifar10 DIR] [--imagenet DIR] [--quick] [--nets 20A,56A] [--out plots/bench.json]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import torch

from .data import BatchStream, find_cifar_dir, load_image_data, make_synthetic, write_cifar_format
from .errors import command
from .fast import Fast, resolve_fast, tune_cpu_allocator
from .models import build_model, count_macs
from .names import display_name
from .runtime import configure_backends
from .graph import train_step

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
    from omegaconf import OmegaConf

    fast = resolve_fast(OmegaConf.create({"compile": False, **overrides}), device)
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
    """Our ImageNet path end to end: loader workers (repro.imagenet: uint8 crops, or bytes for data.decode=cuda)
    and the device tail feeding the training step, or (no folder given) synthetic 224x224 tensors, which
    measures the model alone."""
    from .imagenet import LIGHTING_STD, decode_batch_on_device, load_imagefolder, tail, train_loader

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


@command  # Ctrl-C, a full disk, a read-only folder: one line
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m repro.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar10", type=Path, default=Path("data/cifar10"))
    p.add_argument("--imagenet", type=Path, default=None, help="an ImageFolder root (e.g. Imagenette)")
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true", help="ResNet-20/56 and plain twins, ResNet-18, fewer windows")
    p.add_argument("--nets", help="CIFAR nets, e.g. 20A,56none (default: 20/56/110, ResNet A and plain)")
    p.add_argument("--imagenet-nets", default="18,34", help="ImageNet ResNet depths ('' for none)")
    p.add_argument("--windows", type=int, help="timed windows per measurement (median taken)")
    p.add_argument("--steps", type=int, help="steps per timed window")
    p.add_argument("--ablation", action=argparse.BooleanOptionalAction, default=True,
                   help="also time ResNet-20/56 with the fast switches off one after another")
    p.add_argument("--concurrent", action=argparse.BooleanOptionalAction, default=True,
                   help="CPU: also time 2 runs x 1 thread against 1 run on all threads (ResNet-20, the demo's nets)")
    p.add_argument("--loader", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the ImageNet loader alone, before and after (repro.bench_loader), per worker")
    p.add_argument("--out", type=Path, default=Path("plots/bench.json"))
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else torch.device(args.device)
    data_note = f"CIFAR-10 from {args.cifar10}"
    if find_cifar_dir(args.cifar10) is None:  # same shapes and dtype: throughput does not depend on pixels
        tmp = Path(tempfile.mkdtemp(prefix="repro-bench-"))
        write_cifar_format(tmp, *make_synthetic())
        data_note = f"embedded synthetic task written as cifar-10-batches-py (no CIFAR-10 at {args.cifar10})"
        args.cifar10 = tmp
        print(f"[bench] {data_note}", flush=True)
    cuda = device.type == "cuda"
    windows, steps = (5, 20) if cuda else (3, 2) if args.quick else (5, 3)
    windows, steps = args.windows or windows, args.steps or steps
    nets = parse_nets(args.nets) if args.nets is not None else CIFAR_NETS[:4] if args.quick else CIFAR_NETS
    inet_depths = [int(d) for d in filter(None, args.imagenet_nets.split(","))][:1 if args.quick else None]
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu: {platform.processor() or platform.machine()}, "
                                                                  f"{torch.get_num_threads()} threads",
        "torch": torch.__version__, "method": __doc__.split("\n\n")[1], "data": data_note,
        "fast": vars(our_fast(device, apply=False)), "cifar10": [], "ablation": [], "concurrent": [], "imagenet": [],
        "imagenet_loader": [],
    }
    print(f"[bench] {report['device']}; fast path here: {report['fast']}", flush=True)
    measured = {}  # (depth, shortcut) -> its row, for the ablation and the projection
    for depth, sc in nets:
        macs = count_macs(build_model("cifar10", depth, sc), 32)
        ours = isolated(measure_ours, args.cifar10, depth, sc, device, 128, windows, steps)
        ref = isolated(measure_reference, args.cifar10, depth, sc, device, 128, windows, steps)
        row = {"net": display_name(depth, sc), "batch": 128, "macs_per_image": macs,
               "ours": ours, "reference": ref, "speedup": ours["images_per_s"] / ref["images_per_s"],
               "ours_tflops": tflops(ours["images_per_s"], macs), "reference_tflops": tflops(ref["images_per_s"], macs)}
        report["cifar10"].append(row)
        measured[depth, sc] = row
        print(f"{row['net']:>10}: ours {ours['images_per_s']:8.0f} img/s | reference {ref['images_per_s']:8.0f} img/s | "
              f"x{row['speedup']:.2f} | {row['ours_tflops']:.3f} TFLOP/s", flush=True)
    for depth, sc in ABLATION_NETS if args.ablation else []:
        if (row := measured.get((depth, sc))) is None:
            continue
        for label, overrides in ABLATION + (CUDA_ABLATION if cuda else []):
            r = isolated(measure_ours, args.cifar10, depth, sc, device, 128, windows, steps, **overrides)
            report["ablation"].append({"net": row["net"], "ours": label, "images_per_s": r["images_per_s"],
                                       "vs_reference": r["images_per_s"] / row["reference"]["images_per_s"]})
            print(f"{row['net']:>10}: ours, {label}: {r['images_per_s']:8.0f} img/s "
                  f"(x{report['ablation'][-1]['vs_reference']:.2f} the reference)", flush=True)
    report["fig6_sweep_projection"] = project_fig6({net: row["ours"]["images_per_s"] for net, row in measured.items()})
    if report["fig6_sweep_projection"]:
        print(f"Fig. 6 sweep (9 nets x 64k iterations), one net after another: "
              f"{report['fig6_sweep_projection']['sequential_hours']:.1f} h projected", flush=True)
    for depth, width in CONCURRENT_NETS if not cuda and args.concurrent else []:
        conc = measure_concurrent(args.cifar10, depth, width, 2, 128, windows, steps)
        report["concurrent"].append(conc)
        print(f"{conc['net']}: 2 runs x 1 thread = {conc['aggregate_images_per_s']:.0f} img/s aggregate, one run "
              f"on all threads {conc['one_process_all_threads']:.0f} (x{conc['vs_one_process']:.2f})", flush=True)
    inet_batch = 256 if cuda else 32  # the paper's 256 on a GPU; a CPU step at 256 takes most of a minute
    for depth in inet_depths:
        macs = count_macs(build_model("imagenet", depth, "A"), 224)
        r = isolated(measure_imagenet, args.imagenet, depth, device, inet_batch, 3 if not cuda else 5,
                     1 if not cuda else 10)
        report["imagenet"].append({"net": f"ResNet-{depth}", "batch": inet_batch, "macs_per_image": macs, "ours": r,
                                   "ours_tflops": tflops(r["images_per_s"], macs)})
        print(f"{'ResNet-' + str(depth):>10}: ours {r['images_per_s']:8.1f} img/s (batch {inet_batch}, {r['data']})",
              flush=True)
    if args.loader:
        from .bench_loader import loader_rows

        report["imagenet_loader"] = isolated(loader_rows, args.imagenet, device, repeats=1 if args.quick else 3)
    write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
