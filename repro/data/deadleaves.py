"""An embedded 32x32 10-class task with natural images' statistics: class-conditional "dead leaves".

The dead-leaves model (Matheron; Lee, Mumford & Huang 2001) drops opaque shapes ("leaves") of random position
and colour on top of each other, their sizes from a power law p(r) ~ r^-3 between a few pixels and the image:
occlusion and scale invariance give it natural images' 1/f^2 power spectrum and edge statistics, which the
embedded sinusoid task (repro.data.cifar.make_synthetic) lacks. Here a leaf's shape comes from one of ten
families (disk, square, diamond, triangle, two bars, ring, cross, two diagonal ellipses); an image of class c
draws a fraction `own` of its leaves from family c and the rest from any family, at random positions, sizes and
colours (the same for every class). So the class is in local shape alone: a linear classifier on pixels cannot
find it, a CNN can (tests/test_deadleaves.py). Exact from the seed, on every machine (numpy's PCG64).

`data=deadleaves` trains on it (its 60,000 images take 20-40 s to make on 2 CPU cores, in every run's
process). It is the offline demo's task (repro.demo.EMBEDDED_DEFAULT); docs/demo.md says what has been measured.
"""
from __future__ import annotations

import numpy as np

FAMILIES = ("disk", "square", "diamond", "triangle", "hbar", "vbar", "ring", "cross", "ellipse+", "ellipse-")
SIZE = 32


def _masks(family: int, dy: np.ndarray, dx: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Where leaves of `family` centred at offsets (dy, dx) with size r cover each pixel (broadcast arrays)."""
    ay, ax = np.abs(dy), np.abs(dx)
    name = FAMILIES[family]
    if name == "disk":
        return dy * dy + dx * dx <= r * r
    if name == "square":
        return np.maximum(ay, ax) <= 0.89 * r  # the disk's area
    if name == "diamond":
        return ay + ax <= 1.25 * r
    if name == "triangle":
        return (dy <= 0.8 * r) & (ax <= 0.65 * (dy + 0.8 * r))
    if name == "hbar":
        return (ay <= 0.4 * r) & (ax <= 1.9 * r)
    if name == "vbar":
        return (ax <= 0.4 * r) & (ay <= 1.9 * r)
    if name == "ring":
        d2 = dy * dy + dx * dx
        return (d2 <= r * r) & (d2 >= 0.36 * r * r)
    if name == "cross":
        return ((ay <= 0.33 * r) & (ax <= 1.2 * r)) | ((ax <= 0.33 * r) & (ay <= 1.2 * r))
    u, v = (dy + dx) / np.sqrt(2), (dy - dx) / np.sqrt(2)
    if name == "ellipse-":
        u, v = v, u
    return (u / (1.7 * r)) ** 2 + (v / (0.6 * r)) ** 2 <= 1


def power_law_radii(rng: np.random.Generator, shape, r_min: float, r_max: float, alpha: float) -> np.ndarray:
    """Sizes with density ~ r^-alpha on [r_min, r_max] (inverse CDF)."""
    a = 1 - alpha
    u = rng.random(shape)
    return (r_min ** a + u * (r_max ** a - r_min ** a)) ** (1 / a)


def make_dead_leaves(n_train: int = 50_000, n_test: int = 10_000, seed: int = 0, leaves: int = 32,
                     own: float = 0.5, r_min: float = 2.0, r_max: float = 24.0, alpha: float = 3.0,
                     noise: float = 0.02) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_x, train_y, test_x, test_y): uint8 N x 3 x 32 x 32 images and int64 labels, classes balanced
    (n / 10 each, in a seeded random order). `leaves` per image, a fraction `own` of them of the class's family;
    sizes ~ r^-alpha on [r_min, r_max] pixels (alpha = 3: the scale-invariant dead-leaves model); each leaf one
    colour (a random grey level plus a smaller random tint); pixel noise of std `noise`."""
    rng = np.random.default_rng(seed)
    n_classes = len(FAMILIES)
    yy, xx = np.meshgrid(np.arange(SIZE, dtype=np.float32), np.arange(SIZE, dtype=np.float32), indexing="ij")

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.permutation(np.arange(n) % n_classes)
        fam = np.where(rng.random((n, leaves)) < own, y[:, None], rng.integers(0, n_classes, (n, leaves)))
        cy, cx = (rng.uniform(-4, SIZE + 4, (n, leaves)).astype(np.float32) for _ in range(2))
        r = power_law_radii(rng, (n, leaves), r_min, r_max, alpha).astype(np.float32)
        grey = rng.random((n, leaves, 1))
        colour = np.clip(grey + 0.25 * rng.standard_normal((n, leaves, 3)), 0, 1).astype(np.float32)
        background = rng.random((n, 3)).astype(np.float32)
        out = np.empty((n, 3, SIZE, SIZE), np.uint8)
        for lo in range(0, n, 2000):  # a chunk of images at a time, leaves drawn back to front
            sl = slice(lo, min(lo + 2000, n))
            m = sl.stop - sl.start
            img = np.broadcast_to(background[sl, :, None, None], (m, 3, SIZE, SIZE)).copy()
            for k in range(leaves):
                dy = yy[None] - cy[sl, k, None, None]
                dx = xx[None] - cx[sl, k, None, None]
                rk = r[sl, k, None, None]
                cover = np.zeros((m, SIZE, SIZE), bool)
                for f in range(n_classes):
                    idx = np.nonzero(fam[sl, k] == f)[0]
                    if len(idx):
                        cover[idx] = _masks(f, dy[idx], dx[idx], rk[idx])
                img = np.where(cover[:, None], colour[sl, k, :, None, None], img)
            img += noise * rng.standard_normal(img.shape, dtype=np.float32)
            out[sl] = (np.clip(img, 0, 1) * 255).round()
        return out, y.astype(np.int64)

    train_x, train_y = sample(n_train)
    test_x, test_y = sample(n_test)
    return train_x, train_y, test_x, test_y
