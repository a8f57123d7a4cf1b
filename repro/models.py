"""One parameterised architecture for every network of the paper.

`build_model(family, depth, shortcut)` covers the CIFAR-10 family of §4.2 (depth = 6n+2) and the
ImageNet family of Table 1 (18/34 with basic blocks, 50/101/152 with bottleneck blocks). The plain net
is the same network with `shortcut="none"`: plain and residual blocks differ by one line in `forward`.

Shortcut options (§3.3, Table 3):
  none  no shortcut (the "plain" net)
  A     identity; where the shape changes, subsample by the stride and zero-pad the extra channels
  B     identity; a 1x1 projection (conv + BN) only where the shape changes
  C     a 1x1 projection on every shortcut
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

SHORTCUTS = ("none", "A", "B", "C")
IMAGENET_DEPTHS = {  # Table 1: block kind and blocks per stage (conv2_x .. conv5_x)
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
FAMILIES = ("cifar10", "imagenet")


@dataclass(frozen=True)
class Arch:
    """Everything that tells one network of the paper from another, as data."""

    block: str  # "basic" (two 3x3) or "bottleneck" (1x1, 3x3, 1x1 with 4x expansion, §4.1)
    blocks_per_stage: tuple[int, ...]
    widths: tuple[int, ...]  # filters of each stage (before bottleneck expansion)
    stem: str  # "cifar": 3x3 conv 16 (§4.2); "imagenet": 7x7/2 conv 64 + 3x3/2 max pool (Table 1)
    num_classes: int


def arch_for(family: str, depth: int, num_classes: int | None = None, width: int | None = None) -> Arch:
    """The architecture of `family` at `depth`, or a ValueError naming the valid values. `width` is
    the first stage's filters (the paper: 16 on CIFAR, 64 on ImageNet); later stages double it."""
    if width is not None and (not isinstance(width, int) or width < 1):
        raise ValueError(f"width must be a positive integer, got {width!r}")
    if family == "cifar10":
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ValueError(
                f"CIFAR depth must be 6n+2 with n >= 1 (20, 32, 44, 56, 110, 1202, ...), got {depth!r}"
            )
        n = (depth - 2) // 6  # §4.2: three stages of 2n 3x3 layers + first conv + fc
        w = width or 16
        return Arch("basic", (n, n, n), (w, 2 * w, 4 * w), "cifar", num_classes or 10)
    if family == "imagenet":
        if depth not in IMAGENET_DEPTHS:
            raise ValueError(f"ImageNet depth must be one of {sorted(IMAGENET_DEPTHS)}, got {depth!r}")
        block, layers = IMAGENET_DEPTHS[depth]
        w = width or 64
        return Arch(block, layers, (w, 2 * w, 4 * w, 8 * w), "imagenet", num_classes or 1000)
    raise ValueError(f"unknown model family {family!r}; valid: {', '.join(FAMILIES)}")


class ZeroPadShortcut(nn.Module):
    """Option A (§3.3): parameter-free identity; subsample by `stride`, zero-pad the new channels."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.extra, self.stride = out_ch - in_ch, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x

    def extra_repr(self) -> str:
        return f"pad_channels={self.extra}, stride={self.stride}"


def conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """A conv followed by BN (§3.4: BN right after each conv, before the activation); no conv bias."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(out_ch)
    )


def make_shortcut(kind: str, in_ch: int, out_ch: int, stride: int) -> nn.Module | None:
    reshape = stride != 1 or in_ch != out_ch
    if kind == "none":
        return None
    if kind == "C" or (kind == "B" and reshape):
        return conv_bn(in_ch, out_ch, 1, stride)  # projection shortcut W_s x (eq. 2)
    if kind == "A" and reshape:
        return ZeroPadShortcut(in_ch, out_ch, stride)
    return nn.Identity()


class Block(nn.Module):
    """A basic (two 3x3) or bottleneck (1x1-3x3-1x1) block; a residual block iff it has a shortcut."""

    def __init__(self, kind: str, in_ch: int, width: int, stride: int, shortcut: str):
        super().__init__()
        out_ch = width * 4 if kind == "bottleneck" else width  # §4.1: bottleneck expands 4x
        if kind == "basic":
            self.layers = nn.ModuleList([conv_bn(in_ch, width, 3, stride), conv_bn(width, width, 3)])
        else:  # the paper's stride on the first 1x1 (Table 1's 3.8/7.6/11.3 GFLOPs); torchvision strides
            # the 3x3 ("v1.5", ~4.1 GFLOPs for 50) — parameter counts are the same either way
            self.layers = nn.ModuleList(
                [conv_bn(in_ch, width, 1, stride), conv_bn(width, width, 3), conv_bn(width, out_ch, 1)]
            )
        self.shortcut = make_shortcut(shortcut, in_ch, out_ch, stride)
        self.out_ch = out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for i, layer in enumerate(self.layers):
            out = layer(out)
            if i < len(self.layers) - 1:
                out = F.relu(out)
        if self.shortcut is not None:  # the only difference between a plain and a residual block
            out = out + self.shortcut(x)
        return F.relu(out)


class ResNet(nn.Module):
    """Stem, stages of blocks, global average pool, fully connected layer (§3.3, §4.2, Table 1)."""

    def __init__(self, arch: Arch, shortcut: str):
        super().__init__()
        if shortcut not in SHORTCUTS:
            raise ValueError(f"unknown shortcut {shortcut!r}; valid: {', '.join(SHORTCUTS)} (none = plain)")
        self.arch, self.shortcut = arch, shortcut
        if arch.stem == "cifar":
            in_ch = arch.widths[0]
            self.stem = nn.Sequential(conv_bn(3, in_ch, 3), nn.ReLU(inplace=True))
        else:
            in_ch = arch.widths[0]
            self.stem = nn.Sequential(
                conv_bn(3, in_ch, 7, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1)
            )
        stages = []
        for s, (n_blocks, width) in enumerate(zip(arch.blocks_per_stage, arch.widths)):
            blocks = []
            for b in range(n_blocks):
                stride = 2 if (s > 0 and b == 0) else 1  # downsample at the first block of stages 2+
                blocks.append(Block(arch.block, in_ch, width, stride, shortcut))
                in_ch = blocks[-1].out_ch
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(in_ch, arch.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # He (MSRA) init, [13] in the paper
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def response_layers(self) -> list[nn.BatchNorm2d]:
        """BN modules after each 3x3 conv in layer order: Fig. 7's 'responses' are their outputs."""
        layers = [self.stem[0][1]] if self.arch.stem == "cifar" else []
        for block in self.stages.modules():
            if isinstance(block, Block):
                layers += [seq[1] for seq in block.layers if seq[0].kernel_size == (3, 3)]
        return layers


def build_model(family: str, depth: int, shortcut: str, num_classes: int | None = None,
                width: int | None = None) -> ResNet:
    """`build_model("cifar10", 56, "A")` is ResNet-56; `build_model("cifar10", 56, "none")` is plain-56.
    `width` (first-stage filters) defaults to the paper's; the CPU demo uses narrower nets."""
    if shortcut not in SHORTCUTS:
        raise ValueError(f"unknown shortcut {shortcut!r}; valid: {', '.join(SHORTCUTS)} (none = plain)")
    return ResNet(arch_for(family, depth, num_classes, width), shortcut)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def weighted_layers(model: nn.Module) -> int:
    """Convs and fc on the main path (shortcut projections are not counted in the paper's depth)."""
    n = sum(1 for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and ".shortcut" not in name)
    return n + sum(1 for m in model.modules() if isinstance(m, nn.Linear))


def count_macs(model: nn.Module, size: int) -> int:
    """Multiply-adds of one forward pass of a (1, 3, size, size) image through convs and fc layers —
    the paper's "FLOPs" (Table 1 counts multiply-adds)."""
    total = 0

    def hook(m, inputs, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        else:
            total += m.in_features * m.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    model.train(was_training)
    for h in handles:
        h.remove()
    return total
