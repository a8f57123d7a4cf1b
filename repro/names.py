"""Display names of the paper's networks, in one place (used by models, results and plots alike;
this module imports nothing heavy so the plotting code never pulls in torch)."""


def display_name(depth: int, shortcut: str) -> str:
    """The paper's names: 'plain-56', 'ResNet-56' (option A, the paper's CIFAR default), 'ResNet-34 B'."""
    if shortcut == "none":
        return f"plain-{depth}"
    return f"ResNet-{depth}" if shortcut == "A" else f"ResNet-{depth} {shortcut}"


def run_name(data: str, depth: int, shortcut: str, seed: int, fp32: bool = False) -> str:
    """A run folder's name, from its config and never from the clock: 'cifar10-plain-56-s0',
    'cifar10-resnet-56-s0' (option A), 'imagenet-resnetB-34-s0'; '...-s0-fp32' when bf16 autocast was
    switched off by hand (fast.bf16=false), so that run sits beside the default one."""
    kind = "plain" if shortcut == "none" else ("resnet" if shortcut == "A" else f"resnet{shortcut}")
    return f"{data}-{kind}-{depth}-s{seed}" + ("-fp32" if fp32 else "")
