"""The architecture: golden parameter counts from the paper, depth, shapes, gradient flow, errors."""
import pytest
import torch
import torchvision

from repro.models import SHORTCUTS, ZeroPadShortcut, build_model, count_params, weighted_layers

# §4.2 / paper.md: option A (= plain) and option B parameter counts, exact.
CIFAR_A = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962, 1202: 19_421_274}
CIFAR_B = {20: 272_474, 32: 466_906, 44: 661_338, 56: 855_770, 110: 1_730_714, 1202: 19_424_026}
IMAGENET = {18: (11_515_688, 11_689_512), 34: (21_623_848, 21_797_672)}  # Table 1 / paper.md: (A, B)


@pytest.mark.parametrize("depth", sorted(CIFAR_A))
def test_cifar_golden_parameter_counts(depth):
    counts = {s: count_params(build_model("cifar10", depth, s)) for s in SHORTCUTS}
    assert counts["none"] == counts["A"] == CIFAR_A[depth]
    assert counts["B"] == CIFAR_B[depth]
    assert counts["A"] < counts["B"] < counts["C"]


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_depth_is_the_number_of_weighted_layers(depth):
    for s in SHORTCUTS:
        assert weighted_layers(build_model("cifar10", depth, s)) == depth


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_imagenet_depths(depth):
    assert weighted_layers(build_model("imagenet", depth, "B")) == depth


@pytest.mark.parametrize("depth", sorted(IMAGENET))
def test_imagenet_golden_counts(depth):
    a, b = IMAGENET[depth]
    assert count_params(build_model("imagenet", depth, "none")) == count_params(build_model("imagenet", depth, "A")) == a
    assert count_params(build_model("imagenet", depth, "B")) == b


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_option_b_equals_torchvision(depth):
    ours = build_model("imagenet", depth, "B")
    theirs = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    assert count_params(ours) == count_params(theirs)
    # Same tensors in the same order: the two are the same network, not just the same size.
    assert [tuple(p.shape) for p in ours.parameters()] == [tuple(p.shape) for p in theirs.parameters()]


def test_bottleneck_expands_four_times():
    m = build_model("imagenet", 50, "B")
    assert m.fc.in_features == 2048
    first = m.stages[0][0]
    assert [seq[0].kernel_size for seq in first.layers] == [(1, 1), (3, 3), (1, 1)]
    assert first.layers[-1][0].out_channels == 4 * first.layers[0][0].out_channels


@pytest.mark.parametrize("family,depth,size,classes", [("cifar10", 20, 32, 10), ("imagenet", 18, 64, 1000)])
@pytest.mark.parametrize("shortcut", SHORTCUTS)
def test_forward_shape_and_every_parameter_gets_a_gradient(family, depth, size, classes, shortcut):
    torch.manual_seed(0)
    m = build_model(family, depth, shortcut)
    out = m(torch.randn(4, 3, size, size))
    assert out.shape == (4, classes)
    out.logsumexp(1).sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_option_a_shortcuts_have_no_parameters():
    m = build_model("cifar10", 56, "A")
    pads = [mod for mod in m.modules() if isinstance(mod, ZeroPadShortcut)]
    assert len(pads) == 2  # the first block of stages 2 and 3 (§4.2)
    assert not any("shortcut" in n for n, _ in m.named_parameters())
    x = torch.randn(2, 16, 8, 8)
    y = pads[0](x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, :16], x[:, :, ::2, ::2]) and not y[:, 16:].any()


def test_option_c_projects_every_shortcut():
    m = build_model("cifar10", 20, "C")
    assert sum(1 for n, _ in m.named_modules() if n.endswith(".shortcut")) == 9  # 3n shortcuts, n = 3


def test_he_initialisation():
    torch.manual_seed(0)
    conv = build_model("cifar10", 56, "A").stages[2][0].layers[1][0]  # 64 -> 64, 3x3
    expected = (2 / (64 * 9)) ** 0.5  # MSRA: std = sqrt(2 / fan_out)
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.05)


@pytest.mark.parametrize("depth", [21, 0, 7, "20"])
def test_invalid_cifar_depth_names_the_valid_values(depth):
    with pytest.raises(ValueError, match=r"6n\+2 .*20, 32, 44, 56, 110, 1202"):
        build_model("cifar10", depth, "A")


def test_invalid_imagenet_depth_and_shortcut_and_family():
    with pytest.raises(ValueError, match=r"\[18, 34, 50, 101, 152\], got 20"):
        build_model("imagenet", 20, "B")
    with pytest.raises(ValueError, match="unknown shortcut 'D'; valid: none, A, B, C"):
        build_model("cifar10", 20, "D")
    with pytest.raises(ValueError, match="unknown model family 'mnist'"):
        build_model("mnist", 20, "A")


def test_response_layers_are_the_3x3_layers_in_order():
    m = build_model("cifar10", 20, "A")
    assert len(m.response_layers()) == 19  # every conv of plain-20 is 3x3; the fc is not
    assert len(build_model("imagenet", 50, "B").response_layers()) == 16  # one 3x3 per bottleneck block
