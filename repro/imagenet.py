"""ImageNet-style data (ImageFolder layout: train/<class>/*.JPEG, val/<class>/*.JPEG) with the paper's
augmentation (§3.4): shorter side resized to a random size in [256, 480], a random 224x224 crop or its
horizontal flip, mean subtraction, AlexNet's PCA colour (lighting) augmentation; evaluation on the centre
224 crop of the image resized to 256 (curves, Fig. 4) or on 10 crops (Tables 2, 3; 10-crop testing [21]).

Loading uses torchvision's readers and transforms with worker processes and pinned memory; batches are
drawn by a stream that, like the CIFAR one, is a pure function of (seed, step) and so resumes exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from torchvision import datasets
from torchvision.transforms import v2

from .data import DataError

MEAN = (0.485, 0.456, 0.406)  # per-channel ImageNet mean: with random rescaling, the per-pixel mean is flat
STD = (1.0, 1.0, 1.0)  # §3.4 subtracts the mean only (no division by the std)
# AlexNet's PCA lighting (Krizhevsky et al. 2012, §4.1), eigen-decomposition of ImageNet RGB covariance
# (the values fb.resnet.torch uses), on images scaled to [0, 1].
EIGVAL = (0.2175, 0.0188, 0.0045)
EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))
LIGHTING_STD = 0.1
SCALES = (256, 480)  # §3.4: shorter side in [256, 480]
CROP, RESIZE = 224, 256
IMAGE_EXTS = (".jpeg", ".jpg", ".png")


class Lighting(torch.nn.Module):
    """AlexNet-style PCA colour augmentation: add sum_i alpha_i * eigval_i * eigvec_i, alpha ~ N(0, std)."""

    def __init__(self, std: float = LIGHTING_STD):
        super().__init__()
        self.std = std
        self.register_buffer("eigval", torch.tensor(EIGVAL))
        self.register_buffer("eigvec", torch.tensor(EIGVEC))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if self.std == 0:
            return img
        alpha = torch.randn(3) * self.std
        rgb = self.eigvec @ (alpha * self.eigval)
        return img + rgb.view(3, 1, 1)


def train_transform(lighting: float = LIGHTING_STD) -> v2.Compose:
    return v2.Compose([
        v2.ToImage(),
        v2.RandomShortestSize(min_size=list(range(SCALES[0], SCALES[1] + 1)), antialias=True),
        v2.RandomCrop(CROP),
        v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True),
        Lighting(lighting),
        v2.Normalize(MEAN, STD),
    ])


def eval_transform(crops: int = 1) -> v2.Compose:
    """Centre crop (crops=1) or the 10-crop views (4 corners + centre, and their flips) as (10, 3, 224, 224)."""
    crop = v2.CenterCrop(CROP) if crops == 1 else v2.TenCrop(CROP)
    tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
    if crops == 1:
        return v2.Compose([v2.ToImage(), v2.Resize(RESIZE, antialias=True), crop, *tail])
    return v2.Compose([v2.ToImage(), v2.Resize(RESIZE, antialias=True), crop, StackViews(v2.Compose(tail))])


class StackViews(torch.nn.Module):
    """TenCrop's 10 views, each normalised, as one (10, 3, H, W) tensor (a named module, so it pickles)."""

    def __init__(self, per_view):
        super().__init__()
        self.per_view = per_view

    def forward(self, views) -> torch.Tensor:
        return torch.stack([self.per_view(v) for v in views])


def check_folder(root: Path, split: str) -> Path:
    folder = Path(root).expanduser() / split
    if not folder.is_dir():
        raise DataError(f"ImageNet {split} folder not found: {folder} (expected {root}/{split}/<class>/*.JPEG; "
                        f"get ImageNet from image-net.org, or Imagenette for a small test, and set data.root)")
    classes = [d for d in folder.iterdir() if d.is_dir()]
    if not classes:
        raise DataError(f"{folder} has no class folders (expected {split}/<class>/*.JPEG)")
    empty = [d.name for d in classes if not any(f.suffix.lower() in IMAGE_EXTS for f in d.iterdir())]
    if empty:
        raise DataError(f"class folder(s) without images in {folder}: {', '.join(sorted(empty)[:5])}")
    return folder


def image_folder(root: Path, split: str, transform) -> datasets.ImageFolder:
    folder = check_folder(root, split)
    return datasets.ImageFolder(str(folder), transform=transform)


@dataclass
class ImageFolderData:
    name: str
    source: str
    root: Path
    train: Dataset  # train/ minus the held-out images, with the training augmentation
    val: datasets.ImageFolder  # val/: the reported set (Fig. 4's curves, Tables 2 and 3)
    num_classes: int
    held_out: Dataset | None = None  # val_size images of train/, centre crop: for the plateau rule


def held_out_indices(n: int, val_size: int) -> list[int]:
    """`val_size` of the `n` training images, spread evenly over the (class-sorted) folder, the same for every
    run and seed, so the plateau rule of every run decides on the same images."""
    if not 0 < val_size < n:
        raise DataError(f"data.val_size={val_size} must be between 1 and {n - 1} (the training images)")
    return sorted({int(i * n / val_size) for i in range(val_size)})


def load_imagefolder(*, name: str, root: str | Path, lighting: float = LIGHTING_STD, val_size: int = 0,
                     **_other) -> ImageFolderData:
    """The ImageFolder data at `root` (called with the data config group; its loader keys are not about
    what is loaded). `val_size` training images are held out and evaluated like the val set."""
    root = Path(root).expanduser()
    train = image_folder(root, "train", train_transform(lighting))
    val = image_folder(root, "val", eval_transform(1))
    if train.classes != val.classes:
        raise DataError(f"train and val class folders differ under {root}: "
                        f"{sorted(set(train.classes) ^ set(val.classes))[:5]}")
    data = ImageFolderData(name, f"{name} from {root}", root, train, val, len(train.classes))
    if val_size:
        held = held_out_indices(len(train), val_size)
        keep = sorted(set(range(len(train))) - set(held))
        evaluated = datasets.ImageFolder(str(root / "train"), transform=eval_transform(1))
        data.train, data.held_out = Subset(train, keep), Subset(evaluated, held)
        data.source += f" ({val_size} training images held out for the lr schedule)"
    return data


class StepSampler(Sampler[int]):
    """Stream positions of steps [start, total) for one rank: step s covers positions s*B .. s*B+B-1 of an
    endless sequence of epochs, and rank r takes the r-th slice of each global batch."""

    def __init__(self, batch_size: int, start_step: int, total_steps: int, rank: int = 0, world: int = 1):
        self.batch, self.start, self.total, self.rank, self.world = batch_size, start_step, total_steps, rank, world

    def __iter__(self):
        per = self.batch // self.world
        for step in range(self.start, self.total):
            first = step * self.batch + self.rank * per
            yield from range(first, first + per)

    def __len__(self) -> int:
        return (self.total - self.start) * (self.batch // self.world)


class StreamDataset(Dataset):
    """Position p of the stream -> sample perm_e[p mod n] of epoch e = p // n, augmented with the torch RNG
    seeded by (seed, p): every crop, flip and colour shift is a pure function of the position, so a
    resumed run, or the same global batch split over ranks, sees exactly the same images."""

    def __init__(self, base: Dataset, seed: int):
        self.base, self.seed, self.n = base, seed, len(base)
        self._perm: tuple[int, torch.Tensor] | None = None

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, p: int):
        e = p // self.n
        if self._perm is None or self._perm[0] != e:
            g = torch.Generator().manual_seed(self.seed * 7919 + e + 1)
            self._perm = (e, torch.randperm(self.n, generator=g))
        torch.manual_seed(self.seed * 1_000_003 + p)
        return self.base[int(self._perm[1][p % self.n])]


def train_loader(data: ImageFolderData, batch_size: int, seed: int, start_step: int, total_steps: int,
                 workers: int, rank: int = 0, world: int = 1) -> DataLoader:
    sampler = StepSampler(batch_size, start_step, total_steps, rank, world)
    return DataLoader(StreamDataset(data.train, seed), batch_size=batch_size // world, sampler=sampler,
                      num_workers=workers, pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0,
                      prefetch_factor=4 if workers else None)


def eval_loader(dataset: Dataset, batch_size: int, workers: int, rank: int = 0, world: int = 1) -> DataLoader:
    indices = list(range(rank, len(dataset), world))  # each rank a disjoint share; sums are all-reduced
    return DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size, num_workers=workers,
                      pin_memory=torch.cuda.is_available())


@torch.no_grad()
def evaluate_crops(model, root: Path, crops: int, batch_size: int, workers: int, device: torch.device) -> dict:
    """Top-1/top-5 error of the final model averaging the logits of `crops` views (10-crop testing)."""
    ds = datasets.ImageFolder(str(check_folder(root, "val")), transform=eval_transform(crops))
    loader = DataLoader(ds, batch_size=max(1, batch_size // crops), num_workers=workers)
    model.eval()
    wrong1 = wrong5 = n = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x.flatten(0, 1)).view(len(y), crops, -1).mean(1) if crops > 1 else model(x)
        top5 = logits.topk(min(5, logits.shape[1]), 1).indices
        wrong1 += int((top5[:, 0] != y).sum())
        wrong5 += int((top5 != y[:, None]).all(1).sum())
        n += len(y)
    model.train()
    return {"top1_err": wrong1 / n, "top5_err": wrong5 / n, "crops": crops, "images": n}
