"""One interface over the two kinds of data the loop trains on: CIFAR-style tensors resident on the
device (repro.data) and ImageNet-style folders read by loader workers (repro.data.imagenet).

A Source gives the loop (a) the mini-batches of steps start, start+1, ... for this rank (for CIFAR-style
data also as a device-side stream, `stream`, whose batches a CUDA graph can take), and (b) for each
evaluation split, the summed loss, errors and count over this rank's share of it. The data set (ImageData)
is loaded apart from a seed's stream, so several runs in one process share one copy on the device."""
from __future__ import annotations

from dataclasses import dataclass
from itertools import count
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from repro.data.cifar import BatchStream, ImageData, load_image_data, normalize

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Source:
    name: str  # cifar10, synthetic, imagenet, imagenette, ...
    source: str  # where it came from and why (terminal, meta.json, report)
    train_size: int
    test_size: int
    num_classes: int
    batches: Callable[[int], Iterator[Batch]]  # from a start step on
    splits: dict[str, Callable[[torch.nn.Module], torch.Tensor]]  # "test"/"val" -> [loss_sum, errs, n]
    tensors: ImageData | None = None  # the CIFAR tensors (Fig. 7's analysis uses the test set)
    folders: object | None = None  # the ImageFolder data (10-crop evaluation)
    stream: BatchStream | None = None  # CIFAR: the seed's batch stream (prepare outside a step, take inside)


def eval_sums(model: torch.nn.Module, batches: Iterator[Batch], device: torch.device) -> torch.Tensor:
    """[summed loss, errors, count] over `batches` in eval mode (§4.2: the original view)."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    with torch.no_grad():
        for x, y in batches:
            out = model(x).float()
            sums += torch.stack([F.cross_entropy(out, y, reduction="sum").double(), (out.argmax(1) != y).sum(),
                                 torch.tensor(len(y), device=device)])
    model.train()
    return sums


def cifar_source(data_cfg, batch_size: int, seed: int, device: torch.device, rank: int = 0, world: int = 1,
                 data: ImageData | None = None) -> Source:
    """CIFAR-10 (or the synthetic task) on `device`: `data` when given (loaded once for several runs), else loaded."""
    data = data if data is not None else load_image_data(device, **data_cfg)
    stream = BatchStream(data, batch_size, seed, rank, world)
    eb = data_cfg["eval_batch_size"]

    def tensor_split(x: torch.Tensor, y: torch.Tensor):
        x, y = x[rank::world], y[rank::world]  # each rank a disjoint share; the loop all-reduces the sums
        return lambda model: eval_sums(
            model, ((normalize(x[i:i + eb], data.mean), y[i:i + eb]) for i in range(0, len(x), eb)), device)

    splits = {"test": tensor_split(data.test_x, data.test_y)}
    if data.val_x is not None:
        splits["val"] = tensor_split(data.val_x, data.val_y)
    return Source(data.name, data.source, len(data.train_x), len(data.test_x), data.num_classes,
                  lambda start: (stream.batch(s) for s in count(start)), splits, tensors=data, stream=stream)


def imagefolder_source(data_cfg, batch_size: int, seed: int, total_steps: int, device: torch.device, rank: int = 0,
                       world: int = 1) -> Source:
    """ImageNet-style folders: uint8 crops from loader workers (or, with data.decode=cuda, bytes decoded here on
    the GPU), finished on `device` once per batch (repro.data.imagenet.tail)."""
    from repro.data.imagenet import (
        DataError,
        decode_batch_on_device,
        eval_loader,
        load_imagefolder,
        tail,
        train_loader,
        worker_error,
    )

    data = load_imagefolder(**data_cfg)
    workers, eb = data.workers, data_cfg["eval_batch_size"]

    def batches(start: int) -> Iterator[Batch]:
        try:
            for batch in train_loader(data, batch_size, seed, start, total_steps, workers, rank, world):
                x, alpha, y = decode_batch_on_device(batch, device, data.decoder, data.crop) \
                    if data.decode_on == "cuda" else batch
                yield tail(x, alpha, data.lighting, device), y.to(device, non_blocking=True)
        except DataError as e:
            raise worker_error(e) from None

    def split(samples):
        def sums(model):
            loader = eval_loader(samples, eb, workers, data.decoder, rank, world, crop=data.crop)
            try:
                return eval_sums(model, ((tail(x, None, 0, device), y.to(device)) for x, y in loader), device)
            except DataError as e:
                raise worker_error(e) from None
        return sums

    splits = {"test": split(data.val)}  # ImageNet's val set: what Tables 2 and 3 report
    if data.held_out is not None:  # held-out training images: what the plateau rule decides on
        splits["val"] = split(data.held_out)
    return Source(data.name, data.source, len(data.train), len(data.val), data.num_classes, batches, splits,
                  folders=data)


def load_source(cfg, device: torch.device, rank: int = 0, world: int = 1, data: ImageData | None = None) -> Source:
    """The data the config names, for this rank of `world` (CIFAR-style: the loaded tensors `data` when given)."""
    if cfg.data.get("format") == "imagefolder":
        return imagefolder_source(cfg.data, cfg.optim.batch_size, cfg.seed, cfg.optim.total_steps, device, rank, world)
    return cifar_source(cfg.data, cfg.optim.batch_size, cfg.seed, device, rank, world, data)
