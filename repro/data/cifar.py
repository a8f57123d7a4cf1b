"""CIFAR-10 (and the embedded synthetic stand-in) as uint8 tensors on the training device.

The paper's preprocessing (§4.2): subtract the per-pixel mean of the training images; train on a random
32x32 crop of the image padded by 4 pixels, randomly flipped; test on the original view. Augmentation is
done as batched tensor ops on the device, and the order of the samples and every random draw is a pure
function of (seed, step) — so a run resumed at step s sees exactly the batches an uninterrupted run sees.
"""
from __future__ import annotations

import codecs
import hashlib
import io
import pickle
import urllib.error
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from repro.data.deadleaves import make_dead_leaves
from repro.data.seeds import seeded
from repro.errors import DataError

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"  # of the official archive (torchvision's value)
CIFAR_DIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
PAD = 4  # §4.2: "4 pixels are padded on each side, and a 32x32 crop is randomly sampled"
HOW_TO_GET = (
    "get it with `make data` (downloads the official archive into data/cifar10), "
    "or point data.root at a folder containing cifar-10-batches-py"
)


class UnsafePickle(pickle.UnpicklingError):
    """A pickle that asks for something other than the CIFAR format's classes."""


class _SafeUnpickler(pickle.Unpickler):
    """Admits only what CIFAR's pickles need: numpy array reconstruction (and `_codecs.encode`, which
    Python 3 uses for raw bytes in protocol-2 pickles). Anything else (os.system, eval, subprocess, ...)
    is refused before it can be called."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(0))[0],
        ("numpy._core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(0))[0],
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickle(f"refusing to load {module}.{name}: not part of the CIFAR format") from None


def read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"CIFAR-10 file not found: {path}; {HOW_TO_GET}") from None


def safe_load_pickle(path: Path, raw: bytes | None = None) -> dict:
    """Load one CIFAR batch file (or its bytes `raw`, already read) with the restricted unpickler; keys come
    back as str."""
    raw = read_file(path) if raw is None else raw
    try:
        obj = _SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except UnsafePickle as e:
        raise DataError(f"unsafe pickle {path}: {e} (tampered file?); nothing in it was run; re-download the "
                        f"data ({HOW_TO_GET})") from None
    except Exception as e:  # truncated files raise EOFError, garbage raises many things
        raise DataError(f"corrupt CIFAR-10 file {path} ({type(e).__name__}: {e}); {HOW_TO_GET}") from None
    if not isinstance(obj, dict):
        raise DataError(f"corrupt CIFAR-10 file {path}: expected a dict, got {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def read_batch(path: Path, raw: bytes | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of one batch file (or its bytes `raw`), validated."""
    d = safe_load_pickle(path, raw)
    if "data" not in d or "labels" not in d:
        raise DataError(f"corrupt CIFAR-10 file {path}: missing 'data' or 'labels' (keys: {sorted(d)})")
    x, y = d["data"], np.asarray(d["labels"])
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        shape = getattr(x, "shape", None)
        raise DataError(
            f"bad images in {path}: expected uint8 N x 3072 (3x32x32), got {getattr(x, 'dtype', type(x))} {shape}"
        )
    if y.shape != (x.shape[0],) or y.dtype.kind not in "iu" or y.min() < 0 or y.max() > 9:
        raise DataError(f"bad labels in {path}: expected {x.shape[0]} integers in 0..9")
    return x.reshape(-1, 3, 32, 32), y.astype(np.int64)


def find_cifar_dir(root: Path) -> Path | None:
    for cand in (root / CIFAR_DIR, root):
        if (cand / TRAIN_FILES[0]).exists() or (cand / TEST_FILE).exists():
            return cand
    return None


def download_cifar10(root: Path, url: str = CIFAR_URL, md5: str | None = CIFAR_MD5) -> Path:
    """Download and extract the official archive into `root`, verifying its md5; DataError when offline."""
    from torchvision.datasets.utils import download_and_extract_archive

    print(f"[data] downloading CIFAR-10 from {url} into {root}", flush=True)
    existed = root.exists()
    try:
        download_and_extract_archive(url, str(root), md5=md5)
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        if not existed and root.is_dir() and not any(root.iterdir()):
            root.rmdir()  # leave no empty folder behind from a failed attempt
        raise DataError(
            f"could not download CIFAR-10 from {url} ({e}); on a machine without internet, copy "
            f"cifar-10-python.tar.gz's {CIFAR_DIR}/ folder to {root}/ or set data.root"
        ) from None
    found = find_cifar_dir(root)
    if found is None:
        raise DataError(f"downloaded archive from {url} has no {CIFAR_DIR}/ folder")
    return found


def load_cifar10(root: str | Path, download: bool = False, url: str = CIFAR_URL, md5: str | None = CIFAR_MD5,
                 fingerprint: dict[str, str] | None = None):
    """(train_x, train_y, test_x, test_y) as numpy arrays from `root` (the folder holding
    cifar-10-batches-py, or that folder itself). Batch-file md5s are deliberately not checked: copies
    re-encoded from other sources (like ../shared/data/cifar10) are valid CIFAR-10 for this purpose; they are
    recorded instead, into `fingerprint` when given (which copy a run read: meta.json)."""
    root = Path(root).expanduser()
    folder = find_cifar_dir(root)
    if folder is None:
        if not download:
            raise DataError(f"CIFAR-10 not found in {root} (looked for {root / CIFAR_DIR}); {HOW_TO_GET}")
        folder = download_cifar10(root, url, md5)
    parts = []
    for name in (*TRAIN_FILES, TEST_FILE):
        raw = read_file(folder / name)
        if fingerprint is not None:
            fingerprint[name] = hashlib.md5(raw).hexdigest()
        parts.append(read_batch(folder / name, raw))
    (test_x, test_y), train = parts[-1], parts[:-1]
    return np.concatenate([p[0] for p in train]), np.concatenate([p[1] for p in train]), test_x, test_y


def cifar_fingerprint(root: str | Path) -> dict[str, str]:
    """md5 of each batch file under `root`: which copy of CIFAR-10 a run was trained on (meta.json)."""
    folder = find_cifar_dir(Path(root).expanduser())
    if folder is None:
        raise DataError(f"CIFAR-10 not found in {root}; {HOW_TO_GET}")
    return {f: hashlib.md5(read_file(folder / f)).hexdigest() for f in (*TRAIN_FILES, TEST_FILE)}


def make_synthetic(n_train: int = 50_000, n_test: int = 10_000, seed: int = 0, n_classes: int = 10,
                   prototypes: int = 6, distractor: float = 0.6, noise: float = 0.25):
    """The embedded default: a 32x32, 10-class image task made from a seed, no download needed.

    Each class has a few random smooth colour patterns (prototypes). An image is one prototype of its
    class, randomly translated (circularly) and flipped, blended with a prototype of another class at
    weight `distractor`, plus pixel noise. Translation and clutter make it a task for a CNN; the
    distractor and noise keep a small net from memorising it quickly.
    """
    rng = np.random.default_rng(seed)
    # Smooth random patterns: a few low-frequency sinusoids per colour channel.
    yy, xx = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    n_proto = n_classes * prototypes
    freqs = rng.integers(1, 5, size=(n_proto, 3, 4, 2))  # whole periods over 32 px: translation-safe
    phases = rng.uniform(0, 2 * np.pi, size=(n_proto, 3, 4))
    amps = rng.uniform(0.3, 1.0, size=(n_proto, 3, 4))
    arg = 2 * np.pi * (freqs[..., 0, None, None] * yy + freqs[..., 1, None, None] * xx) / 32 + phases[..., None, None]
    protos = (amps[..., None, None] * np.sin(arg)).sum(2)  # (n_proto, 3, 32, 32)
    protos = (protos / np.abs(protos).max(axis=(1, 2, 3), keepdims=True)).astype(np.float32)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, n_classes, size=n)
        main = y * prototypes + rng.integers(0, prototypes, size=n)
        other = (y + rng.integers(1, n_classes, size=n)) % n_classes * prototypes + rng.integers(0, prototypes, size=n)
        dy, dx = rng.integers(0, 32, size=(2, n))
        flip = rng.random(n) < 0.5
        out = np.empty((n, 3, 32, 32), np.uint8)
        for lo in range(0, n, 5000):  # in chunks: a few hundred MB at a time
            sl = slice(lo, min(lo + 5000, n))
            rows = (yy[None] + dy[sl, None, None]) % 32
            cols = (xx[None] + dx[sl, None, None]) % 32
            cols = np.where(flip[sl, None, None], cols[:, :, ::-1], cols)
            img = protos[main[sl, None, None, None], np.arange(3)[None, :, None, None], rows[:, None], cols[:, None]]
            img = img + distractor * protos[other[sl]] + noise * rng.standard_normal(img.shape, dtype=np.float32)
            img -= img.min(axis=(1, 2, 3), keepdims=True)
            img /= img.max(axis=(1, 2, 3), keepdims=True)
            out[sl] = (img * 255).round()
        return out, y.astype(np.int64)

    train_x, train_y = sample(n_train)
    test_x, test_y = sample(n_test)
    return train_x, train_y, test_x, test_y


def write_cifar_format(folder: Path, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                       test_y: np.ndarray) -> Path:
    """Write arrays as a cifar-10-batches-py folder (5 training batches + test_batch), so tools that only
    read that format (torchvision's CIFAR10, the benchmark's reference pipeline) can use them. Keys are
    str, as the official (Python 2) files give them to `pickle.load(f, encoding="latin1")`, torchvision's
    way of reading them; our reader accepts str and bytes keys alike."""
    out = Path(folder) / CIFAR_DIR
    out.mkdir(parents=True, exist_ok=True)
    parts = np.array_split(np.arange(len(train_x)), len(TRAIN_FILES))
    for name, idx, x, y in [*((f, p, train_x, train_y) for f, p in zip(TRAIN_FILES, parts)),
                            (TEST_FILE, np.arange(len(test_x)), test_x, test_y)]:
        batch = {"batch_label": name, "labels": y[idx].tolist(), "data": x[idx].reshape(len(idx), -1),
                 "filenames": [f"{i}.png" for i in idx]}
        (out / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": len(parts[0])}
    (out / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return out


@dataclass
class ImageData:
    """A whole image-classification data set resident on one device as uint8."""

    name: str  # "cifar10" or "synthetic"
    source: str  # where it came from and why, said on the terminal and in the report
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: torch.Tensor  # per-pixel mean of the training images, (3, 32, 32) float in [0, 1] (§4.2)
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None
    md5: dict[str, str] | None = None  # of the batch files read (CIFAR-10): which copy it was

    @property
    def num_classes(self) -> int:
        return int(self.train_y.max().item()) + 1


# The embedded tasks, made from data.synthetic_seed (no download): data.name -> generator
EMBEDDED = {"synthetic": make_synthetic, "deadleaves": make_dead_leaves}


def load_image_data(device: torch.device, *, name: str, root: str | Path, download: bool = False, url: str = CIFAR_URL,
                    synthetic_seed: int = 0, val_size: int = 0, train_size: int = 0, test_size: int = 0,
                    eval_batch_size: int | None = None) -> ImageData:
    """CIFAR-10 at `root` (downloaded there when `download` and missing), or the embedded synthetic task
    (`name` 'synthetic', or the dead-leaves task 'deadleaves': EMBEDDED), on `device`. Called with the data
    config group, `load_image_data(dev, **cfg.data)`,
    whose every key is a parameter here (eval_batch_size is the evaluation's, not used in loading), so a renamed
    or unknown key fails at once. Sizes 0 = all images."""
    root = Path(root).expanduser()
    if name in EMBEDDED:
        arrays, source = EMBEDDED[name](seed=synthetic_seed), f"embedded {name} task (seed {synthetic_seed})"
        md5 = None
    else:
        md5 = {}
        arrays, source = load_cifar10(root, download=download, url=url, fingerprint=md5), f"CIFAR-10 from {root}"
    train_x, train_y, test_x, test_y = (torch.from_numpy(a) for a in arrays)
    if train_size:  # a prefix of the training set, for tests and quick looks
        train_x, train_y = train_x[:train_size], train_y[:train_size]
    if test_size:
        test_x, test_y = test_x[:test_size], test_y[:test_size]
    val_x = val_y = None
    if val_size:  # §4.2: the 45k/5k split used to choose the 64k stopping point
        if not 0 < val_size < len(train_x):
            raise DataError(f"data.val_size={val_size} must be between 1 and {len(train_x) - 1}")
        val_x, val_y = train_x[-val_size:], train_y[-val_size:]
        train_x, train_y = train_x[:-val_size], train_y[:-val_size]
    # exact integer sums in float64, a chunk at a time (a float64 copy of the set would be 1.2 GB)
    total = sum(chunk.sum(0, dtype=torch.float64) for chunk in train_x.split(4096))
    mean = (total / len(train_x)).div(255).float()
    put = lambda t: None if t is None else t.to(device)  # noqa: E731
    return ImageData(name if name in EMBEDDED else "cifar10", source, put(train_x), put(train_y),
                     put(test_x), put(test_y), put(mean), put(val_x), put(val_y), md5=md5)


DRAW_WINDOW = 256  # steps whose random draws are computed ahead on the CPU and uploaded to the device at once


class BatchStream:
    """Mini-batch `step` of an endless stream of epochs, each a fresh permutation of the training set.
    Every batch is full-sized (batches may straddle epochs), which keeps shapes static. With `world`
    data-parallel ranks, rank r gets the r-th slice of the same global batch.

    No host work per step: the draws of a window of `window` steps (the batch's sample indices, crop offsets
    and flips, each from its (seed, step) generator exactly as `draws` gives them) are computed ahead and
    uploaded once, and `take` reads the next step's from the device buffers through a device-side counter.
    So a step is device operations only (what a CUDA graph can capture); `prepare(step)`, called outside the
    step, refills the window when it runs out and repositions it on a jump (a resume)."""

    def __init__(self, data: ImageData, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                 window: int = DRAW_WINDOW):
        self.data, self.batch_size, self.seed, self.window = data, batch_size, seed, window
        self.n, self.device = len(data.train_x), data.train_x.device
        per = batch_size // world
        self.mine = slice(rank * per, (rank + 1) * per)
        self._perms: dict[int, torch.Tensor] = {}
        dev = self.device
        self.idx = torch.zeros(window, per, dtype=torch.long, device=dev)
        self.off = torch.zeros(window, 2, per, dtype=torch.long, device=dev)
        self.flip = torch.zeros(window, per, dtype=torch.bool, device=dev)
        self.pos = torch.zeros(1, dtype=torch.long, device=dev)  # the window row the next `take` reads
        # the window holds steps [begin, begin + window) (none yet); `next` is the step at `pos`
        self.begin = self.next = -self.window - 1

    def _perm(self, epoch: int) -> torch.Tensor:
        """Epoch `epoch`'s order (drawn on the CPU, the same on every device)."""
        if epoch not in self._perms:
            perm = torch.randperm(self.n, generator=seeded("epoch", self.seed, epoch))
            self._perms = {k: v for k, v in self._perms.items() if k == epoch - 1} | {epoch: perm}
        return self._perms[epoch]

    def indices(self, step: int) -> torch.Tensor:
        """The global batch of `step`: positions in the training set (CPU)."""
        start = step * self.batch_size
        first, at = divmod(start, self.n)
        head = self._perm(first)[at : at + self.batch_size]
        if len(head) == self.batch_size:
            return head
        return torch.cat([head, self._perm(first + 1)[: self.batch_size - len(head)]])

    def epoch(self, step: int) -> float:
        """Epochs completed after `step` steps."""
        return step * self.batch_size / self.n

    def draws(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This rank's (indices, offsets (2, B), flips) of `step`, on the CPU: a pure function of (seed, step)."""
        g = seeded("step", self.seed, step)
        offsets = torch.randint(0, 2 * PAD + 1, (2, self.batch_size), generator=g)[:, self.mine]
        flips = (torch.rand(self.batch_size, generator=g) < 0.5)[self.mine]
        return self.indices(step)[self.mine], offsets, flips

    def _fill(self, start: int) -> None:
        """The window from `start`: drawn on the CPU, one pinned upload per buffer (asynchronous on CUDA)."""
        rows = [self.draws(s) for s in range(start, start + self.window)]
        pin = self.device.type == "cuda"
        for buf, part in zip((self.idx, self.off, self.flip), zip(*rows)):
            host = torch.stack(part)
            buf.copy_(host.pin_memory() if pin else host, non_blocking=pin)
        self.pos.zero_()
        self.begin = start

    def prepare(self, step: int) -> None:
        """Make the next `take` give `step`'s batch (outside the step: it may upload a window)."""
        if not self.begin <= step < self.begin + self.window:
            self._fill(step)
        elif step != self.next:  # a jump inside the window (the counter is on the device: set it)
            self.pos.fill_(step - self.begin)
        self.next = step + 1

    def take(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The prepared step's batch, from device buffers only (no host copy, no synchronisation), and the
        counter moved on: capturable in a CUDA graph."""
        idx = self.idx.index_select(0, self.pos)[0]
        offsets, flips = self.off.index_select(0, self.pos)[0], self.flip.index_select(0, self.pos)[0]
        self.pos.add_(1)
        x = augment(self.data.train_x[idx], self.data.mean, offsets, flips)
        return x, self.data.train_y[idx]

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.prepare(step)
        return self.take()


def normalize(x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """uint8 images -> floats in [0, 1] minus the per-pixel training mean (§4.2)."""
    return x.float().div_(255).sub_(mean)


def augment(x: torch.Tensor, mean: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Pad 4 (with zeros after mean subtraction, i.e. with the mean image's value, as fb.resnet.torch),
    crop 32x32 at per-sample `offsets` (2, B) in [0, 8], flip where `flips`: one gather for the batch."""
    b, c, h, w = x.shape
    dev = x.device
    padded = torch.nn.functional.pad(normalize(x, mean), (PAD, PAD, PAD, PAD))
    rows = offsets[0, :, None] + torch.arange(h, device=dev)  # (B, H)
    cols = offsets[1, :, None] + torch.arange(w, device=dev)  # (B, W)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    return padded[
        torch.arange(b, device=dev)[:, None, None, None],
        torch.arange(c, device=dev)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
