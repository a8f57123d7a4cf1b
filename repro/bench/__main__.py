"""`make bench`: end-to-end training throughput of our pipeline against a reference pipeline written
the standard way, measured in the same run, on the current device. Writes plots/bench.json.

Ours:      the whole data set as uint8 on the device, batched augmentation, and the `fast` switches as
           `fast=auto` resolves them here (repro/train/fast.py: channels_last, bf16 where the hardware has it,
           fused SGD, the CPU allocator setting); `train_step` is the very function the training loop calls.
Reference: torchvision's CIFAR10 dataset + DataLoader (2 workers) with PIL transforms + an eager fp32
           NCHW model and a plain SGD loop — the way common reproductions are written.
Every measurement runs in a fresh process (its own allocator state, threads and peak memory), one after
the other; the ablation rows switch our fast path's parts off one at a time (and, on CUDA, add
fast.compile=reduce-overhead). fp32 is true fp32 everywhere: TF32 off, as in training (repro.train.runtime).
Throughput = images/s over data + augmentation + forward + backward + step, median of several timed
windows after warm-up. Effective TFLOP/s uses 6 x the paper's per-image multiply-adds per trained image
(paper.md "Compute": a training step costs ~3 forward passes of 2 FLOPs per multiply-add).

    python -m repro.bench [--cifar10 DIR] [--imagenet DIR] [--quick] [--nets 20A,56A] [--out plots/bench.json]
"""
from __future__ import annotations

import argparse
import platform
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch

from repro.bench.common import (
    ABLATION,
    ABLATION_NETS,
    CIFAR_NETS,
    CONCURRENT_NETS,
    CUDA_ABLATION,
    isolated,
    measure_concurrent,
    measure_imagenet,
    measure_ours,
    measure_reference,
    our_fast,
    parse_nets,
    project_fig6,
    tflops,
    write_json,
)
from repro.bench.loader import loader_rows
from repro.data.cifar import find_cifar_dir, make_synthetic, write_cifar_format
from repro.errors import command
from repro.models import build_model, count_macs
from repro.names import display_name


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
                   help="also time the ImageNet loader alone, before and after (repro.bench.loader), per worker")
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
        report["imagenet_loader"] = isolated(loader_rows, args.imagenet, device, repeats=1 if args.quick else 3)
    write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
