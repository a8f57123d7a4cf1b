"""The ImageNet loader alone (issue 21): images per second from JPEG files to a batch ready for the net on the
training device, per loader worker and for the configured worker count, with no net behind it.

Pipelines, measured in one run on the same files:
  reference  the ImageNet path before 2026-12, the way torchvision's references write it: PIL decode,
             torchvision's PIL transforms (resize, crop, flip), float32, lighting and mean per image in the
             worker (`reference_view`, on the same draws), float32 crops through shared memory and the copy.
  <decoder>  ours (repro.data.imagenet): the tensor decoder (torchcodec, torchvision) or PIL in the worker,
             resize/crop/flip there, uint8 crops handed over, float/lighting/mean once per batch on the device.
  cuda       (CUDA only) workers read bytes; the batch is decoded on the GPU (nvJPEG).
Image sets: the ImageFolder given (e.g. the shared Imagenette sample, 224x224 files of ~10 KB) and generated
ImageNet-sized JPEGs (500x375, quality 95, 4:4:4 chroma; ImageNet's files average ~110 KB), which cost
what real ImageNet files cost to decode and resize.

    python -m repro.bench.loader [--imagenet DIR] [--out plots/bench_loader.json]   (make bench includes it)
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from repro.bench.common import isolated, measure_imagenet, write_json
from repro.data.imagenet import (
    CROP,
    EIGVAL,
    EIGVEC,
    LIGHTING_STD,
    MEAN,
    Draw,
    Samples,
    StepSampler,
    StreamDataset,
    collate_mixed,
    decode_batch_on_device,
    draw,
    folder_samples,
    resolve_decoder,
    resolve_workers,
    tail,
)
from repro.errors import command

IMAGENET_SIZE = (500, 375)  # ImageNet's typical full-size JPEG (width, height)


def reference_view(path: str, d: Draw, lighting: float = LIGHTING_STD) -> torch.Tensor:
    """One training image as the ImageNet path before 2026-12 computed it, in the worker: PIL decode and
    geometry (torchvision's PIL transforms), float32, the lighting shift, the mean — under the draw `d`."""
    from PIL import Image
    from torchvision.transforms.v2 import functional as F

    with open(path, "rb") as f:
        img = F.resize(Image.open(f).convert("RGB"), [d.scale], antialias=True)
    w, h = img.size
    img = F.crop(img, int(d.top * (h - CROP + 1)), int(d.left * (w - CROP + 1)), CROP, CROP)
    if d.flip:
        img = F.horizontal_flip(img)
    x = F.to_dtype(F.pil_to_tensor(img), torch.float32, scale=True)
    alpha = torch.tensor(d.alpha, dtype=torch.float32) * lighting
    x = x + (torch.tensor(EIGVEC) @ (alpha * torch.tensor(EIGVAL))).view(3, 1, 1)
    return x - torch.tensor(MEAN).view(3, 1, 1)


class ReferenceDataset(StreamDataset):
    """The stream's samples and draws through `reference_view`: float32 crops out (for comparison only)."""

    def __getitem__(self, p: int):
        path, label = self.sample(p)
        return reference_view(path, draw(self.seed, p)), label


def write_imagenet_sized(out: Path, n: int, like: Samples | None = None, seed: int = 0) -> Samples:
    """`n` JPEGs of ImageNet's size and quality (500x375, q95, 4:4:4) in out/train/<class>/ (10 classes; the
    first of each class also in out/val/, so the folder loads as a data set): the images of `like` (e.g.
    Imagenette) upscaled with a little sensor-like noise, else smooth random scenes."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        if like:
            base = Image.open(like[i % len(like)][0]).convert("RGB").resize(IMAGENET_SIZE, Image.BICUBIC)
        else:
            small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
            base = Image.fromarray(small).resize(IMAGENET_SIZE, Image.BICUBIC)
        pixels = np.asarray(base, dtype=np.float32) + rng.normal(0, 4, (IMAGENET_SIZE[1], IMAGENET_SIZE[0], 3))
        folder = out / "train" / f"n{i % 10:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"img_{i:05d}.JPEG"
        image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
        image.save(path, quality=95, subsampling=0)
        if i < 10:
            (out / "val" / folder.name).mkdir(parents=True, exist_ok=True)
            image.save(out / "val" / folder.name / path.name, quality=95, subsampling=0)
        samples.append((str(path), i % 10))
    return samples


def measure(pipeline: str, samples: Samples, workers: int, device: torch.device, batch: int = 32,
            batches: int = 8, warmup: int = 2) -> dict:
    """Images/s of one pipeline over `batches` batches after `warmup` (the workers started, prefetch filled),
    ending with the batch on `device` as the net takes it."""
    total = warmup + batches
    sampler = StepSampler(batch, 0, total)
    on_device = pipeline == "cuda"
    if pipeline == "reference":
        ds, collate = ReferenceDataset(samples, 0), None
    else:
        ds = StreamDataset(samples, 0, "auto" if on_device else pipeline, on_device)
        collate = collate_mixed if on_device else None
    loader = DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers, collate_fn=collate,
                        pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    t = None
    for i, b in enumerate(loader):
        if i == warmup:
            sync()
            t = time.perf_counter()
        if pipeline == "reference":
            x = b[0].to(device, non_blocking=True)
        else:
            x, alpha, _ = decode_batch_on_device(b, device, resolve_decoder("auto")) if on_device else b
            x = tail(x, alpha, LIGHTING_STD, device)
        assert x.shape == (batch, 3, CROP, CROP) and x.dtype == torch.float32
    sync()
    secs = time.perf_counter() - t
    return {"images_per_s": batch * batches / secs, "workers": workers, "batch": batch, "batches": batches}


def pipelines(device: torch.device) -> list[str]:
    """reference, then our decoders available here (torchcodec if installed), then GPU decode on CUDA."""
    ours = ["torchvision", "pil"]
    if resolve_decoder("auto") == "torchcodec":
        ours.insert(0, "torchcodec")
    return ["reference", *ours, *(["cuda"] if device.type == "cuda" else [])]


def loader_rows(imagenet: Path | None, device: torch.device, generated: int = 96, repeats: int = 3,
                batches: int = 6, batch: int = 32) -> list[dict]:
    """One row per (image set, pipeline): images/s with one worker (per worker) and with the configured count,
    medians of `repeats` measurements taken in turn (so a slow patch of the machine hits every pipeline), and
    each pipeline's speed-up over the reference in the same run."""
    sets: dict[str, Samples] = {}
    like = None
    if imagenet is not None:
        like, _ = folder_samples(imagenet, "train")
        sets[f"Imagenette sample ({imagenet}, 224x224 files)"] = like[:256]
    tmp = Path(tempfile.mkdtemp(prefix="repro-loader-"))
    sets[f"generated ImageNet-sized JPEGs ({IMAGENET_SIZE[0]}x{IMAGENET_SIZE[1]}, q95, 4:4:4)"] = \
        write_imagenet_sized(tmp, generated, like)
    configured = resolve_workers("auto")
    rows = []
    for name, samples in sets.items():
        names = pipelines(device)
        counts = sorted({1, configured})
        got: dict[tuple[str, int], list[float]] = {(p, w): [] for p in names for w in counts}
        for _ in range(repeats):
            for p in names:
                for w in counts:
                    got[p, w].append(measure(p, samples, w, device, batch, batches)["images_per_s"])
        for p in names:
            per = statistics.median(got[p, 1])
            row = {"images": name, "pipeline": p, "images_per_s_per_worker": per,
                   "workers": configured, "images_per_s": statistics.median(got[p, configured]),
                   "measurements_per_worker": got[p, 1],
                   "vs_reference_per_worker": per / statistics.median(got["reference", 1])}
            rows.append(row)
            print(f"[loader] {name[:40]:<40} {p:>11}: {per:7.1f} img/s per worker, {row['images_per_s']:7.1f} with "
                  f"{configured} (x{row['vs_reference_per_worker']:.2f} the reference)", flush=True)
    return rows


@command  # Ctrl-C, a full disk, a read-only folder: one line
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m repro.bench.loader", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--imagenet", type=Path, default=None, help="an ImageFolder root (e.g. ../shared/data/imagenette)")
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--net-depth", type=int, default=0,
                   help="also time ImageNet ResNet-<depth> training steps fed by each pipeline (0: the loader alone)")
    p.add_argument("--out", type=Path, default=Path("plots/bench_loader.json"))
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
        else torch.device(args.device)
    rows = loader_rows(args.imagenet, device, repeats=args.repeats)
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
              "cores": len(os.sched_getaffinity(0)), "torch": torch.__version__,
              "method": __doc__.split("\n\n")[0], "imagenet_loader": rows, "fed": []}
    if args.net_depth:  # the training step fed by each of our pipelines from ImageNet-sized files
        root = Path(tempfile.mkdtemp(prefix="repro-fed-"))
        write_imagenet_sized(root, 512)
        batch = 256 if device.type == "cuda" else 16
        for p in [p for p in pipelines(device) if p != "reference"]:
            kw = {"decode": "cuda"} if p == "cuda" else {"decoder": p}
            r = isolated(measure_imagenet, root, args.net_depth, device, batch, 3, 5 if device.type == "cuda" else 1,
                         **kw)
            report["fed"].append({"net": f"ResNet-{args.net_depth}", "pipeline": p, "batch": batch, **r})
            print(f"[fed] ResNet-{args.net_depth} fed by {p}: {r['images_per_s']:.0f} img/s ({r['data']})", flush=True)
    write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
