"""The dead-leaves task (repro.data.deadleaves): exact from its seed, balanced, natural images' power spectrum, and
a task for convolution (a linear classifier on pixels stays at chance where a small CNN learns). Each check can
fail: white noise fails the spectrum test; the thresholds are stated before measuring, from principle (chance is
10%; natural images' power spectra fall as f^-2 +- 0.5, van der Schaaf & van Hateren 1996)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import CIFAR, has_real_cifar

from repro.data.cifar import load_cifar10, make_synthetic
from repro.data.deadleaves import make_dead_leaves
from repro.models import build_model


@pytest.fixture(scope="module")
def task():
    return make_dead_leaves(n_train=2000, n_test=500, seed=0)


def spectral_slope(x: np.ndarray) -> float:
    """The log-log slope of the radially averaged power spectrum of the images' grey levels, 2-14 cycles/image."""
    g = x.astype(np.float64).mean(1)
    g = g - g.mean(axis=(1, 2), keepdims=True)
    power = (np.abs(np.fft.fft2(g)) ** 2).mean(0)
    radius = np.rint(np.hypot(*np.meshgrid(np.fft.fftfreq(32), np.fft.fftfreq(32), indexing="ij")) * 32).astype(int)
    bins = np.arange(2, 15)
    return float(np.polyfit(np.log(bins), np.log([power[radius == b].mean() for b in bins]), 1)[0])


def test_the_same_seed_gives_the_same_bytes_and_another_seed_other_images(task):
    again = make_dead_leaves(n_train=2000, n_test=500, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(task, again))
    other = make_dead_leaves(n_train=2000, n_test=500, seed=1)
    assert not np.array_equal(task[0], other[0])
    x, y = task[0], task[1]
    assert x.shape == (2000, 3, 32, 32) and x.dtype == np.uint8 and y.dtype == np.int64


def test_the_classes_are_balanced(task):
    assert np.bincount(task[1]).tolist() == [200] * 10 and np.bincount(task[3]).tolist() == [50] * 10


def test_the_power_spectrum_falls_like_natural_images_and_white_noise_does_not(task):
    """(`pytest tests/test_deadleaves.py -s -k spectrum` prints the slopes docs/demo.md quotes, the sinusoid task's
    and the CIFAR-10 copy's beside, where it is.)"""
    noise = np.random.default_rng(0).integers(0, 256, (500, 3, 32, 32)).astype(np.uint8)
    slopes = {"dead leaves": spectral_slope(task[0]), "white noise": spectral_slope(noise),
              "sinusoid task": spectral_slope(make_synthetic(n_train=2000, n_test=0, seed=0)[0])}
    if has_real_cifar():
        slopes["CIFAR-10 copy"] = spectral_slope(load_cifar10(CIFAR)[0][:2000])
    print("power-spectrum slopes: " + ", ".join(f"{k} {v:.2f}" for k, v in slopes.items()))
    assert -3.0 <= slopes["dead leaves"] <= -1.5
    assert not -3.0 <= slopes["white noise"] <= -1.5  # the negative control: flat, slope ~0


@pytest.mark.slow  # two small trainings: up to ~40 s on a busy 2-core machine
def test_a_linear_classifier_on_pixels_stays_near_chance_where_a_small_cnn_learns(task):
    """Softmax regression on the pixels (it fits its training set) against ResNet-8 at width 8, 200 SGD steps of 64."""
    torch.manual_seed(0)
    x, xt = (torch.tensor(a).float() / 255 for a in (task[0], task[2]))
    mean = x.mean(0)
    x, xt = x - mean, xt - mean
    y, yt = torch.tensor(task[1]), torch.tensor(task[3])
    w = torch.zeros(3 * 32 * 32, 10, requires_grad=True)
    opt = torch.optim.Adam([w], lr=1e-3)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(x.flatten(1) @ w, y).backward()
        opt.step()
    linear = ((xt.flatten(1) @ w).argmax(1) == yt).float().mean().item()
    fitted = ((x.flatten(1) @ w).argmax(1) == y).float().mean().item()  # it does fit its training set
    net = build_model("cifar10", 8, "A", width=8)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        i = torch.randint(0, len(x), (64,), generator=g)
        opt.zero_grad()
        F.cross_entropy(net(x[i]), y[i]).backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        cnn = (net(xt).argmax(1) == yt).float().mean().item()
    print(f"test accuracy: linear {linear:.3f} (training set {fitted:.3f}), ResNet-8 {cnn:.3f} (chance 0.1)")
    assert linear <= 0.2 and cnn >= linear + 0.15, (linear, cnn)
