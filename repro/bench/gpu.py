"""`make bench-gpu`: the CIFAR-10 step on one GPU, eager against graphed against packed, side by side in one
process, and what each makes of the paper's sweeps. Writes plots/bench_<gpu>.json.

- eager / graphed: each Fig. 6 net's training step as the loop runs it (repro.train.step: EagerStep, GraphStep —
  the very objects `repro.train.loop.train` calls), batch 128, fast=auto, images/s over the median timed window;
- packed: the nine Fig. 6 nets stepped in turn in this process, each its own graph on its own CUDA stream
  (repro.train.pack's way), aggregate images/s;
- eval: one evaluation of the 10,000 test images per net (Fig. 6 evaluates every 500 iterations: 129 times);
- grouped: the microbenchmark for fusing N seeds of one net into one wider net — a 3x3 convolution over
  N x C channels with groups=N against N separate convolutions of C channels, forward + backward, each as a
  replayed CUDA graph, bf16 channels_last, at each stage's size;
- projections: minutes for the Fig. 6 sweep (9 nets x 64k iterations, evaluations included) and for the
  whole CIFAR section (Fig. 6 + Table 6's five depths x 5 seeds + ResNet-1202) on each path.
Throughput does not depend on the pixels: the embedded synthetic task (50k/10k) is used unless --cifar10 is
given. Each section that fails is recorded in the JSON with its error; the others still run.

    python -m repro.bench.gpu [--nets 20A,56A] [--windows 3] [--steps 50] [--device cuda] [--out FILE]
"""
from __future__ import annotations

import argparse
import platform
import re
import statistics
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import torch

from repro.bench.common import FIG6_NETS, our_net, parse_nets, sec_per_image, timed, write_json
from repro.data.cifar import load_image_data
from repro.data.sources import cifar_source
from repro.errors import command
from repro.names import display_name
from repro.train.fast import resolve_fast
from repro.train.pack import on_stream
from repro.train.run import Trainee
from repro.train.runtime import configure_backends
from repro.train.step import make_step

BATCH, STEPS_64K, EVALS = 128, 64_000, 64_000 // 500 + 1  # §4.2: batch 128, 64k iterations; eval_every 500
TABLE6 = [(d, "A") for d in (20, 32, 44, 56, 110)]  # Table 6's depths (1202 apart), 5 seeds each
SEEDS = 5


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(depth: int, shortcut: str, data, device: torch.device, graph: bool):
    """A run's step as the loop makes it (data shared; the bench's seeded net), its evaluation, its CUDA stream."""
    fast = resolve_fast(device, graph=graph)
    net, opt, _ = our_net(fast, device, "cifar10", depth, shortcut)
    t = Trainee(net, net, net, opt, None, fast.graph)
    src = cifar_source({"eval_batch_size": 1000}, BATCH, 0, device, data=data)
    sums = torch.zeros(2, 3, dtype=torch.float64, device=device)
    step = make_step(t, src, sums, 1, 0, device, display_name(depth, shortcut))
    stream = torch.cuda.Stream(device) if device.type == "cuda" else None
    return step, src, net, stream


def rate(runs, device: torch.device, windows: int, steps: int, warm: int) -> dict:
    """Aggregate images/s of `runs` [(step, stream)] stepped in turn (one run: that run's rate); the untimed
    `warm` rounds hold the eager warm-up steps and the capture."""
    at = [0] * len(runs)

    def round_():
        for i, (step, stream) in enumerate(runs):
            with on_stream(stream):
                step(at[i], 0.1)
            at[i] += 1

    secs = timed(round_, windows, steps, warm, lambda: sync(device))
    return {"images_per_s": len(runs) * BATCH / statistics.median(secs), "windows_s_per_round": secs}


def eval_seconds(src, net, device: torch.device) -> float:
    src.splits["test"](net)  # warm (cuDNN picks its eval kernels)
    sync(device)
    t0 = time.perf_counter()
    src.splits["test"](net).tolist()
    return time.perf_counter() - t0


def project(eager: dict, graphed: dict, packed: dict | None, evals: dict) -> dict:
    """Minutes for the Fig. 6 sweep and the whole CIFAR section on each path (module docstring). The pack's
    runs are graphed on CUDA (eager on the CPU: then its gain is against the eager rates)."""
    eval_s = {net: s * EVALS for net, s in evals.items()}
    mean_eval = statistics.mean(eval_s.values()) if eval_s else 0.0

    def seq(rates: dict, nets) -> float | None:
        per = [sec_per_image(rates, d, s) for d, s in nets]
        if None in per:
            return None
        return (sum(p * STEPS_64K * BATCH for p in per) + sum(eval_s.get((d, s), mean_eval) for d, s in nets)) / 60

    section = FIG6_NETS + [n for n in TABLE6 for _ in range(SEEDS - 1)] + [(1202, "A")]  # seed 0 is Fig. 6's
    out = {"fig6_sweep_minutes": {"eager": seq(eager, FIG6_NETS), "graphed": seq(graphed, FIG6_NETS)},
           "cifar_section_minutes": {"eager": seq(eager, section), "graphed": seq(graphed, section)},
           "section_runs": len(section)}
    if packed:
        # the pack steps its runs in turn, so each goes at its graphed speed times the pack's gain (the
        # aggregate over the sum of the runs alone); the section's critical path, ResNet-1202, bounds it below
        graphed = graphed or eager
        one_by_one = sum(1 / graphed[n] for n in packed["nets"]) / len(packed["nets"])  # s per image, in turn
        gain = packed["images_per_s"] * one_by_one
        fig6 = seq(graphed, FIG6_NETS)
        whole = seq(graphed, section)
        r1202 = sec_per_image(graphed, 1202, "A")
        floor = r1202 * STEPS_64K * BATCH / 60 if r1202 else 0.0
        out["pack_gain"] = gain
        out["fig6_sweep_minutes"]["packed"] = fig6 / gain if fig6 else None
        out["cifar_section_minutes"]["packed"] = max(whole / gain, floor) if whole else None
        out["resnet_1202_alone_minutes"] = floor or None
    out["note"] = ("projected from this run's throughputs; unmeasured depths on the line through the measured "
                   "ones; evaluations included (129 per run, each timed here once per net); packed = the graphed "
                   "total divided by the measured pack gain, never below ResNet-1202 alone")
    return out


def grouped_conv(device: torch.device, windows: int, steps: int) -> list[dict]:
    """Forward + backward of a 3x3 conv over N x C channels, groups=N, against N separate C-channel convs."""
    rows = []
    for c, hw in ((16, 32), (32, 16), (64, 8)):  # the three stages of the CIFAR nets (§4.2)
        for n in (4, 8):
            x = torch.randn(BATCH, n * c, hw, hw, device=device).to(memory_format=torch.channels_last)
            fused = torch.nn.Conv2d(n * c, n * c, 3, padding=1, groups=n, bias=False).to(
                device, memory_format=torch.channels_last)
            apart = [torch.nn.Conv2d(c, c, 3, padding=1, bias=False).to(device, memory_format=torch.channels_last)
                     for _ in range(n)]
            xs = [t.contiguous(memory_format=torch.channels_last) for t in x.chunk(n, 1)]

            def one():
                with torch.autocast(device.type, torch.bfloat16):
                    fused(x).float().sum().backward()

            def many():
                with torch.autocast(device.type, torch.bfloat16):
                    sum(conv(xi).float().sum() for conv, xi in zip(apart, xs)).backward()

            t_one, t_many = (graph_time(f, device, windows, steps) for f in (one, many))
            rows.append({"channels": c, "size": hw, "models": n, "grouped_ms": 1e3 * t_one, "separate_ms": 1e3 * t_many,
                         "grouped_speedup": t_many / t_one})
    return rows


def graph_time(fn, device: torch.device, windows: int, steps: int) -> float:
    """Seconds per replay of `fn` captured as a CUDA graph (after 3 eager calls on a side stream)."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return statistics.median(timed(g.replay, windows, steps, 1, lambda: sync(device)))


def section(report: dict, key: str, fn):
    """Run one section; on failure record its error and go on (a device run is one shot)."""
    try:
        return fn()
    except Exception as e:
        report.setdefault("errors", {})[key] = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"
        print(f"[bench-gpu] {key} failed: {type(e).__name__}: {e}", flush=True)
        return None


GPU_MODEL = re.compile(r"\b([A-Z]{1,2}\d{1,4}[A-Z]?)\b")  # H100, H200, A100, L40S, V100, T4


def gpu_model(device_name: str) -> str:
    """The GPU's model for file names: 'NVIDIA H100 80GB HBM3' -> 'h100', 'NVIDIA A100-SXM4-80GB' -> 'a100',
    'NVIDIA GeForce RTX 4090' -> 'rtx4090' (a number alone is joined to the word before it)."""
    words = device_name.replace("-", " ").replace("_", " ").split()
    for w in words:
        if GPU_MODEL.fullmatch(w):
            return w.lower()
    numbered = [i for i, w in enumerate(words) if w.isdigit()]
    if numbered:
        i = numbered[0]
        return (words[i - 1] + words[i]).lower() if i else words[i]
    return words[-1].lower() if words else "gpu"


@command  # Ctrl-C, a full disk, a read-only folder: one line
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m repro.bench.gpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nets", help="nets for eager/graphed, e.g. 20A,56none (default: Fig. 6's nine)")
    p.add_argument("--cifar10", type=Path, default=None, help="CIFAR-10 folder (default: the embedded task)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--steps", type=int, default=50, help="steps per timed window")
    p.add_argument("--warm", type=int, default=10, help="untimed rounds first (the eager warm-up and the capture)")
    p.add_argument("--train-size", type=int, default=0, help="a prefix of the training set (tests)")
    p.add_argument("--out", type=Path, default=None, help="default plots/bench_<gpu>.json")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:  # the captures happen on the current device's streams: make it the one measured
        device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
        torch.cuda.set_device(device)
    configure_backends(device, deterministic=False)
    gpu = torch.cuda.get_device_name(device) if cuda else f"cpu {platform.machine()}"
    out = args.out or Path("plots") / f"bench_{gpu_model(gpu) if cuda else 'cpu'}.json"
    nets = parse_nets(args.nets) if args.nets else FIG6_NETS
    t_start = time.perf_counter()
    kwargs = {"name": "cifar10", "root": args.cifar10} if args.cifar10 else {"name": "synthetic", "root": "."}
    data = load_image_data(device, train_size=args.train_size, test_size=args.train_size, **kwargs)
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": gpu,
              "torch": torch.__version__, "method": __doc__.split("\n\n")[1], "batch": BATCH,
              "data": "CIFAR-10 from " + str(args.cifar10) if args.cifar10 else "embedded synthetic task",
              "nets": []}
    eager, graphed, evals = {}, {}, {}
    warm = args.warm
    for depth, sc in nets:
        name = display_name(depth, sc)
        row = {"net": name}
        for path, store in (("eager", eager), ("graphed", graphed)):
            if path == "graphed" and not cuda:
                continue

            def measure(path=path):
                step, src, net, stream = build(depth, sc, data, device, graph=path == "graphed")
                r = rate([(step, stream)], device, args.windows, args.steps, warm)
                if path == "eager":
                    evals[depth, sc] = eval_seconds(src, net, device)
                return r["images_per_s"]

            if (ips := section(report, f"{name} {path}", measure)) is not None:
                store[depth, sc] = row[f"{path}_images_per_s"] = ips
        row["eval_s"] = evals.get((depth, sc))
        if "graphed_images_per_s" in row and "eager_images_per_s" in row:
            row["graph_speedup"] = row["graphed_images_per_s"] / row["eager_images_per_s"]
        report["nets"].append(row)
        print(f"[bench-gpu] {name:>10}: eager {row.get('eager_images_per_s', float('nan')):8.0f} img/s | graphed "
              f"{row.get('graphed_images_per_s', float('nan')):8.0f} img/s", flush=True)

    alone = graphed if cuda else eager
    in_pack = [n for n in nets if n in alone]  # the measured nets, all at once (default: Fig. 6's nine)

    def packed():
        group = [build(d, s, data, device, graph=cuda) for d, s in in_pack]
        r = rate([(g[0], g[3]) for g in group], device, args.windows, max(args.steps // 5, 2), warm)
        return {"nets": [display_name(*n) for n in in_pack], "runs": len(group), **r,
                "steps": sorted({g[0].kind for g in group})}

    report["packed"] = section(report, "packed", packed) if in_pack else None
    if report["packed"]:
        print(f"[bench-gpu] packed ({report['packed']['runs']} runs): {report['packed']['images_per_s']:.0f} img/s "
              f"aggregate", flush=True)
    if cuda:
        report["grouped_conv"] = section(report, "grouped_conv", lambda: grouped_conv(device, args.windows, args.steps))
    pk = {**report["packed"], "nets": in_pack} if report["packed"] else None
    report.update(section(report, "projection", lambda: project(eager, graphed, pk, evals)) or {})
    report["seconds"] = time.perf_counter() - t_start
    write_json(out, report)
    print(f"[bench-gpu] Fig. 6 sweep minutes: {report.get('fig6_sweep_minutes')}; whole CIFAR section minutes: "
          f"{report.get('cifar_section_minutes')}; wrote {out} in {report['seconds']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
