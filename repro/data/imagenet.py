"""ImageNet-style data (ImageFolder layout: train/<class>/*.JPEG, val/<class>/*.JPEG) with the paper's
augmentation (§3.4): shorter side resized to a random size in [256, 480], a random 224x224 crop or its
horizontal flip, mean subtraction, AlexNet's PCA colour (lighting) augmentation; evaluation on the centre
224 crop of the image resized to 256 (curves, Fig. 4) or on 10 crops (Tables 2, 3; 10-crop testing [21]).

Where the work happens. A loader worker reads a file, decodes it (`decoder`: torchcodec's tensor decoder
where installed, else torchvision's, else PIL), resizes and crops it, and hands over the 224x224 crop as
uint8 (a quarter of float32's bytes through shared memory, pinning and the host-to-device copy). The float
conversion, the lighting shift and the mean subtraction run once per batch on the training device (`tail`).
With `data.decode=cuda` the workers only read bytes and the training process decodes a batch at once on the
GPU (nvJPEG); files the GPU decoder does not take (progressive, greyscale, CMYK, not a JPEG) are decoded by
the worker on the CPU, per file.

Every random draw (scale, crop offsets, flip, lighting alphas) is `draw(seed, position)`, a pure function of
the sample's position in the run's stream (`StreamDataset`), so a run resumes exactly and a global batch is
the same however it is split over processes or workers. `STREAM` (repro.protocol) numbers this stream: a
run started on another one is refused rather than continued on different draws.
"""
from __future__ import annotations

import functools
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import datasets
from torchvision.transforms.v2 import functional as F

from repro.data.seeds import seeded
from repro.errors import DataError

MEAN = (0.485, 0.456, 0.406)  # per-channel ImageNet mean: with random rescaling, the per-pixel mean is flat
# AlexNet's PCA lighting (Krizhevsky et al. 2012, §4.1), eigen-decomposition of ImageNet RGB covariance
# (the values fb.resnet.torch uses), on images scaled to [0, 1]. §3.4 subtracts the mean only (no std).
EIGVAL = (0.2175, 0.0188, 0.0045)
EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))
LIGHTING_STD = 0.1
SCALES = (256, 480)  # §3.4: shorter side in [256, 480]
CROP, RESIZE = 224, 256  # §3.4: 224x224 crops; §3.4/[21]: evaluation on the image resized to 256
# data.crop other than 224 (a CPU-sized run, a deviation from §3.4 its protocol label names) scales the whole
# geometry with it: at crop 112 the shorter side is drawn from [128, 240] and evaluation resizes to 128.
IMAGE_EXTS = (".jpeg", ".jpg", ".png")
DECODERS = ("auto", "torchcodec", "torchvision", "pil")
DECODE_ON = ("cpu", "cuda")


# ---- the draws: a pure function of (seed, stream position) ----

@dataclass(frozen=True)
class Draw:
    scale: int  # the shorter side after resizing, in SCALES
    top: float  # crop offsets as fractions in [0, 1) of the room left around the crop
    left: float
    flip: bool
    alpha: tuple[float, float, float]  # N(0, 1) lighting coefficients (scaled by data.lighting on the device)


def draw(seed: int, position: int) -> Draw:
    g = seeded("step", seed, position)
    u = torch.rand(4, generator=g, dtype=torch.float64).tolist()
    alpha = torch.randn(3, generator=g, dtype=torch.float64).tolist()
    span = SCALES[1] - SCALES[0] + 1
    return Draw(SCALES[0] + min(int(u[0] * span), span - 1), u[1], u[2], u[3] < 0.5, tuple(alpha))


# ---- decoding ----

def _torchcodec():
    try:
        from torchcodec.decoders import decode_image
    except Exception:  # not installed, or installed without its libraries: the fallback says so
        return None
    return lambda data: decode_image(data, mode="RGB")


def _torchvision():
    from torchvision.io import ImageReadMode, decode_image
    return lambda data: _quiet(decode_image, data, mode=ImageReadMode.RGB)


def _quiet(fn, *args, **kwargs):
    """torchvision's decoders, without their deprecation warning (0.29: use torchcodec; kept as the fallback)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return fn(*args, **kwargs)


def _pil(data: torch.Tensor):
    from PIL import Image
    return Image.open(io.BytesIO(data.numpy().tobytes())).convert("RGB")


def resolve_decoder(name: str) -> str:
    """The decoder `name` stands for here: 'auto' is torchcodec where it imports, else torchvision."""
    if name not in DECODERS:
        raise DataError(f"data.decoder={name!r} is not one of {', '.join(DECODERS)}")
    if name == "auto":
        return "torchcodec" if _torchcodec() is not None else "torchvision"
    if name == "torchcodec" and _torchcodec() is None:
        raise DataError("data.decoder=torchcodec but torchcodec does not import: pip install 'repro[decode]' "
                        "(or torchcodec), or set data.decoder=auto")
    return name


def decoder_fn(name: str) -> Callable[[torch.Tensor], object]:
    """bytes (1-D uint8 tensor) -> an RGB image: a (3, H, W) uint8 tensor, or for 'pil' a PIL image (so the
    geometry below runs in PIL, as torchvision's PIL transforms do)."""
    return {"torchcodec": _torchcodec, "torchvision": _torchvision, "pil": lambda: _pil}[resolve_decoder(name)]()


def read_bytes(path: str) -> torch.Tensor:
    with open(path, "rb") as f:
        return torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)


def decode(path: str, data: torch.Tensor, decoder: Callable):
    """The image in `data` (read from `path`); a file the tensor decoder refuses (an odd JPEG, a PNG under a
    .JPEG name) goes to PIL, and one nobody can read is a DataError naming the file."""
    try:
        return decoder(data)
    except Exception as first:
        if decoder is _pil:
            raise DataError(f"cannot decode {path}: {str(first).splitlines()[0]}; replace or remove the file") from None
        try:
            return F.pil_to_tensor(_pil(data))
        except Exception as e:
            raise DataError(f"cannot decode {path}: {str(e).splitlines()[0]}; replace or remove the file") from None


def gpu_decodable(data: torch.Tensor) -> bool:
    """Whether nvJPEG's batched decode takes these bytes: a baseline (sequential) JPEG with 3 components.
    Progressive, greyscale, CMYK and non-JPEG files are decoded on the CPU instead."""
    b = memoryview(data.numpy())  # the header is read in place, the file not copied
    if b[:2] != b"\xff\xd8":
        return False
    i = 2
    while i + 4 <= len(b):
        if b[i] != 0xFF:
            return False
        marker = b[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(b[i + 2:i + 4], "big")
        if marker in (0xC0, 0xC1):  # SOF0/SOF1: baseline / extended sequential Huffman
            return i + 9 < len(b) and b[i + 9] == 3
        if 0xC2 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # progressive, lossless, arithmetic
            return False
        if marker == 0xDA:  # start of scan before any frame header
            return False
        i += 2 + length
    return False


# ---- geometry: one image -> a uint8 view ----

def scaled(size: int, crop: int) -> int:
    """A §3.4 size (given for 224 crops) for crops of `crop` pixels."""
    return size if crop == CROP else round(size * crop / CROP)


def train_view(img, d: Draw, crop: int = CROP) -> torch.Tensor:
    """§3.4's training view of `img` under draw `d`: shorter side to d.scale, a 224 crop, maybe flipped (uint8);
    with another `crop`, the scale in proportion."""
    img = F.resize(img, [scaled(d.scale, crop)], antialias=True)
    h, w = F.get_size(img)
    img = F.crop(img, int(d.top * (h - crop + 1)), int(d.left * (w - crop + 1)), crop, crop)
    if d.flip:
        img = F.horizontal_flip(img)
    return img if isinstance(img, torch.Tensor) else F.pil_to_tensor(img)


def eval_view(img, crops: int = 1, crop: int = CROP) -> torch.Tensor:
    """Shorter side to 256, then the centre 224 crop (3, 224, 224), or the 10 crops (4 corners + centre and
    their flips) as (10, 3, 224, 224); uint8. With another `crop`, the resize in proportion."""
    img = F.resize(img, [scaled(RESIZE, crop)], antialias=True)
    views = [F.center_crop(img, [crop])] if crops == 1 else list(F.ten_crop(img, [crop]))
    views = [v if isinstance(v, torch.Tensor) else F.pil_to_tensor(v) for v in views]
    return views[0] if crops == 1 else torch.stack(views)


# ---- the device-side tail, once per batch ----

@functools.lru_cache(maxsize=None)
def _tail_constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and the lighting basis (column i: eigval_i * eigvec_i) on `device`, made once per device."""
    return torch.tensor(MEAN, device=device), (torch.tensor(EIGVEC) * torch.tensor(EIGVAL)).to(device)


def tail(x: torch.Tensor, alpha: torch.Tensor | None, lighting: float, device: torch.device) -> torch.Tensor:
    """uint8 (B, 3, H, W) [or (B, V, 3, H, W)] -> float32 on `device`: /255, plus the lighting shift
    sum_i alpha_i * lighting * eigval_i * eigvec_i (training), minus the mean (§3.4)."""
    mean, basis = _tail_constants(device)
    x = x.to(device, non_blocking=True).float().div_(255)
    shift = -mean.expand(len(x), 3)
    if alpha is not None and lighting:
        shift = shift + (alpha.to(device, torch.float32, non_blocking=True) * lighting) @ basis.T
    return x.add_(shift.reshape(len(x), *[1] * (x.dim() - 4), 3, 1, 1))


# ---- folders ----

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


Samples = list[tuple[str, int]]  # (path, class index), class folders sorted, as ImageFolder lists them


# fast.ai's Imagenette (10 ImageNet classes; the 2019 "imagenette2" split: 9,469 train / 3,925 val), shorter side
# 160 or 320 px: archive URL and md5 (as torchvision's datasets.Imagenette lists them). Each extracts to
# imagenette2-<size>/{train,val}/<wnid>/*.JPEG, the ImageFolder layout the loader reads (data.root = that folder).
IMAGENETTE = {
    "160px": ("https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz", "e793b78cc4c9e9a4ccc0c1155377a412"),
    "320px": ("https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-320.tgz", "3df6f0d01a2c9592104656642f5e78a3"),
}


def download_imagenette(root: str | Path, size: str = "160px", url: str | None = None,
                        md5: str | None = None) -> Path:
    """Imagenette (`size` 160px or 320px; `url`/`md5` override the release's) downloaded into `root`, its md5
    checked, and extracted; returns the folder holding train/ and val/ (data.root). Already there: nothing is
    fetched. Offline, corrupt or of another layout: one DataError naming the file and what to do."""
    if size not in IMAGENETTE:
        raise DataError(f"Imagenette size {size!r}; valid: {', '.join(IMAGENETTE)}")
    from torchvision.datasets.utils import check_integrity, download_url, extract_archive

    root = Path(root).expanduser()
    url, md5 = url or IMAGENETTE[size][0], md5 or IMAGENETTE[size][1]
    name = url.rsplit("/", 1)[-1]
    folder, archive = root / name.removesuffix(".tgz").removesuffix(".tar.gz"), root / name
    if (folder / "train").is_dir() and (folder / "val").is_dir():
        print(f"[data] Imagenette is in {folder}", flush=True)
        return folder
    if not archive.exists():
        print(f"[data] downloading Imagenette ({size}) from {url} into {root}", flush=True)
        try:  # torchvision's downloader, as CIFAR-10's; the md5 is checked below, with our own message
            download_url(url, str(root), filename=name)
        except (OSError, RuntimeError, ValueError) as e:  # urllib's errors are OSErrors
            archive.unlink(missing_ok=True)
            raise DataError(f"could not download Imagenette from {url} ({str(e).splitlines()[0] if str(e) else e}); "
                            f"on a machine without internet, fetch {name} elsewhere and put it in {root}/ (or its "
                            f"extracted {folder.name}/ with train/ and val/), then rerun") from None
    if not check_integrity(str(archive), md5):
        raise DataError(f"{archive} is corrupt or not the {size} release (its md5 is not {md5}); delete it and "
                        f"rerun to download it again")
    try:
        extract_archive(str(archive), str(root))
    except (OSError, EOFError, ValueError, RuntimeError) as e:
        raise DataError(f"cannot extract {archive} ({e}); delete it and rerun") from None
    if not ((folder / "train").is_dir() and (folder / "val").is_dir()):
        raise DataError(f"{archive} did not extract to {folder}/train and {folder}/val (not an imagenette2 archive?)")
    print(f"[data] Imagenette ready in {folder} (data.root={folder})", flush=True)
    return folder


def folder_samples(root: Path, split: str) -> tuple[Samples, list[str]]:
    folder = check_folder(root, split)
    classes, index = datasets.folder.find_classes(str(folder))
    return datasets.folder.make_dataset(str(folder), index, extensions=IMAGE_EXTS), classes


@dataclass
class ImageFolderData:
    name: str
    source: str
    root: Path
    train: Samples  # train/ minus the held-out images
    val: Samples  # val/: the reported set (Fig. 4's curves, Tables 2 and 3)
    num_classes: int
    held_out: Samples | None = None  # val_size images of train/, evaluated like val/: for the plateau rule
    lighting: float = LIGHTING_STD
    decoder: str = "auto"  # as resolved (torchcodec / torchvision / pil)
    decode_on: str = "cpu"
    workers: int = 0  # loader processes, as resolved (data.workers)
    crop: int = CROP  # the side of the square crops the nets see (data.crop)


def held_out_indices(n: int, val_size: int) -> list[int]:
    """`val_size` of the `n` training images, spread evenly over the (class-sorted) folder, the same for every
    run and seed, so the plateau rule of every run decides on the same images."""
    if not 0 < val_size < n:
        raise DataError(f"data.val_size={val_size} must be between 1 and {n - 1} (the training images)")
    return sorted({int(i * n / val_size) for i in range(val_size)})


def load_imagefolder(*, name: str, root: str | Path, lighting: float = LIGHTING_STD, val_size: int = 0,
                     decoder: str = "auto", decode: str = "cpu", workers="auto", format: str = "imagefolder",
                     eval_batch_size: int | None = None, crop: int = CROP) -> ImageFolderData:
    """The ImageFolder data at `root` (called with the data config group, whose every key is a parameter here:
    `format` chose this reader and eval_batch_size is the evaluation's), read by `workers` loader processes
    (auto: the host's cores shared by the LOCAL_WORLD_SIZE training processes on it). `val_size` training
    images are held out and evaluated like the val set."""
    root = Path(root).expanduser()
    if not isinstance(crop, int) or not 32 <= crop <= CROP:
        raise DataError(f"data.crop={crop!r}: use a side in pixels from 32 to {CROP} (§3.4: {CROP})")
    if decode not in DECODE_ON:
        raise DataError(f"data.decode={decode!r} is not one of {', '.join(DECODE_ON)} (where JPEGs are decoded)")
    if decode == "cuda" and not torch.cuda.is_available():
        raise DataError("data.decode=cuda needs a CUDA device; set data.decode=cpu")
    train, classes = folder_samples(root, "train")
    val, val_classes = folder_samples(root, "val")
    if classes != val_classes:
        raise DataError(f"train and val class folders differ under {root}: "
                        f"{sorted(set(classes) ^ set(val_classes))[:5]}")
    resolved = resolve_decoder(decoder)
    data = ImageFolderData(name, f"{name} from {root} (decoded by {resolved} on {decode})", root, train, val,
                           len(classes), lighting=lighting, decoder=resolved, decode_on=decode,
                           workers=resolve_workers(workers, int(os.environ.get("LOCAL_WORLD_SIZE", 1))), crop=crop)
    if crop != CROP:
        data.source += f" ({crop} px crops, §3.4's geometry scaled by {crop}/{CROP})"
    if val_size:
        held = held_out_indices(len(train), val_size)
        keep = sorted(set(range(len(train))) - set(held))
        data.train, data.held_out = [train[i] for i in keep], [train[i] for i in held]
        data.source += f" ({val_size} training images held out for the lr schedule)"
    return data


# ---- datasets and loaders ----

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


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    return torch.randperm(n, generator=seeded("epoch", seed, epoch))


class StreamDataset(Dataset):
    """Position p of the stream -> sample order_e[p mod n] of epoch e = p // n, viewed under draw(seed, p):
    (uint8 crop, lighting alphas, label). With `on_device` (data.decode=cuda) a GPU-decodable file comes
    back undecoded, as (bytes, draw, label), for the training process to decode a batch at once."""

    def __init__(self, samples: Samples, seed: int, decoder: str = "auto", on_device: bool = False,
                 crop: int = CROP):
        self.samples, self.seed, self.n, self.crop = samples, seed, len(samples), crop
        self.decoder_name, self.on_device = decoder, on_device
        self._order: tuple[int, torch.Tensor] | None = None
        self._decoder = None

    def __len__(self) -> int:
        return 2**62

    def sample(self, p: int) -> tuple[str, int]:
        """(path, label) at stream position `p` (the epoch's order made once per epoch)."""
        e = p // self.n
        if self._order is None or self._order[0] != e:
            self._order = (e, epoch_order(self.seed, e, self.n))
        return self.samples[int(self._order[1][p % self.n])]

    def __getitem__(self, p: int):
        path, label = self.sample(p)
        d, data = draw(self.seed, p), read_bytes(path)
        if self.on_device and gpu_decodable(data):
            return (data, path), d, label
        self._decoder = self._decoder or decoder_fn(self.decoder_name)  # made in the worker (picklable dataset)
        return train_view(decode(path, data, self._decoder), d, self.crop), torch.tensor(d.alpha), label


class EvalDataset(Dataset):
    """(uint8 centre crop, or the 10 crops, label) of each image."""

    def __init__(self, samples: Samples, decoder: str = "auto", crops: int = 1, crop: int = CROP):
        self.samples, self.decoder_name, self.crops, self.crop = samples, decoder, crops, crop
        self._decoder = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        self._decoder = self._decoder or decoder_fn(self.decoder_name)
        return eval_view(decode(path, read_bytes(path), self._decoder), self.crops, self.crop), label


def collate_mixed(items):
    """A batch of a decode=cuda stream: the crops the workers made, and the bytes left for the GPU."""
    return items


def default_workers(processes_per_host: int = 1) -> int:
    """Loader workers per training process: the host's cores shared by its processes, one core left to each
    process itself, at most 16 (torchvision's reference default)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(16, cores // max(1, processes_per_host) - 1))


def resolve_workers(value, processes_per_host: int = 1) -> int:
    if value in (None, "auto"):
        return default_workers(processes_per_host)
    if not isinstance(value, int) or value < 0:
        raise DataError(f"data.workers={value!r}: use auto or a count >= 0 (0 = load in the training process)")
    return value


def worker_context():
    """The multiprocessing context for loader workers: the platform's default, also inside a process that another
    library started with its own (joblib's loky workers, where `hydra/launcher=parallel` runs each training
    process, cannot start standard children)."""
    import multiprocessing as mp
    method = mp.get_start_method(allow_none=True)
    standard = mp.get_all_start_methods()
    return mp.get_context(method if method in standard else standard[0])


def _loader(dataset, batch_size: int, workers: int, **kw) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=torch.cuda.is_available(),
                      persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
                      multiprocessing_context=worker_context() if workers else None, **kw)


def train_loader(data: ImageFolderData, batch_size: int, seed: int, start_step: int, total_steps: int,
                 workers: int, rank: int = 0, world: int = 1) -> DataLoader:
    sampler = StepSampler(batch_size, start_step, total_steps, rank, world)
    on_device = data.decode_on == "cuda"
    return _loader(StreamDataset(data.train, seed, data.decoder, on_device, data.crop), batch_size // world, workers,
                   sampler=sampler, collate_fn=collate_mixed if on_device else None)


def eval_loader(samples: Samples, batch_size: int, workers: int, decoder: str, rank: int = 0, world: int = 1,
                crops: int = 1, crop: int = CROP) -> DataLoader:
    mine = samples[rank::world]  # each rank a disjoint share; sums are all-reduced
    return DataLoader(EvalDataset(mine, decoder, crops, crop), batch_size=batch_size, num_workers=workers,
                      pin_memory=torch.cuda.is_available(),
                      multiprocessing_context=worker_context() if workers else None)


def decode_batch_on_device(items, device: torch.device, decoder: str, crop: int = CROP):
    """A decode=cuda batch: the undecoded files decoded together on `device` (nvJPEG on CUDA), each viewed
    under its draw there; a file the batched decode refuses is decoded alone on the CPU. -> (uint8, alphas, y)."""
    waiting = [i for i, it in enumerate(items) if isinstance(it[1], Draw)]
    views: dict[int, torch.Tensor] = {}
    if waiting:
        files = [items[i][0] for i in waiting]  # (bytes, path)
        try:
            decoded = _batched_decode([b for b, _ in files], device, decoder)
        except Exception:  # one bad file fails a batched call: decode them one by one, on the CPU when refused
            decoded = [_one_on_device(b, path, device, decoder) for b, path in files]
        for i, img in zip(waiting, decoded):
            views[i] = train_view(img, items[i][1], crop)
    crops, alphas, labels = [], [], []
    for i, (x, d, y) in enumerate(items):
        crops.append(views[i] if i in views else x.to(device, non_blocking=True))
        alphas.append(torch.tensor(d.alpha) if isinstance(d, Draw) else d)
        labels.append(y)
    return torch.stack(crops), torch.stack(alphas), torch.tensor(labels)


def _batched_decode(blobs: list[torch.Tensor], device: torch.device, decoder: str) -> list[torch.Tensor]:
    """`decoder` as resolved (ImageFolderData.decoder): torchcodec's batched decoder, else torchvision's."""
    if decoder == "torchcodec":
        from torchcodec.decoders import decode_jpeg
        return decode_jpeg(blobs, mode="RGB", device=device)
    from torchvision.io import ImageReadMode, decode_jpeg
    return _quiet(decode_jpeg, blobs, mode=ImageReadMode.RGB, device=device)


def _one_on_device(blob: torch.Tensor, path: str, device: torch.device, decoder: str) -> torch.Tensor:
    try:
        return _batched_decode([blob], device, decoder)[0]
    except Exception:
        img = decode(path, blob, decoder_fn(decoder))
        return (img if isinstance(img, torch.Tensor) else F.pil_to_tensor(img)).to(device)


def worker_error(e: DataError) -> DataError:
    """The DataError a loader worker raised, as its own one line (the loader re-raises it with the worker's
    traceback folded into the message)."""
    lines = [line for line in str(e).splitlines() if line.strip()]
    return DataError(lines[-1].split("DataError: ", 1)[-1] if lines else str(e))


@torch.no_grad()
def evaluate_crops(model, data: ImageFolderData, crops: int, batch_size: int, device: torch.device) -> dict:
    """Top-1/top-5 error of the final model averaging the logits of `crops` views (10-crop testing)."""
    loader = eval_loader(data.val, max(1, batch_size // crops), data.workers, data.decoder, crops=crops,
                         crop=data.crop)
    model.eval()
    wrong1 = wrong5 = n = 0
    for x, y in loader:
        x, y = tail(x, None, 0, device), y.to(device)
        logits = model(x.flatten(0, 1)).view(len(y), crops, -1).mean(1) if crops > 1 else model(x)
        top5 = logits.topk(min(5, logits.shape[1]), 1).indices
        wrong1 += int((top5[:, 0] != y).sum())
        wrong5 += int((top5 != y[:, None]).all(1).sum())
        n += len(y)
    model.train()
    return {"top1_err": wrong1 / n, "top5_err": wrong5 / n, "crops": crops, "images": n}
