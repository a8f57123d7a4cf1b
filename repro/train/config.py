"""The config checks done before anything is built, read or written (one clear error each, naming the value
and the fix), and where Hydra's configs live."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from repro.errors import ConfigError
from repro.models import SHORTCUTS, arch_for
from repro.train.trackers import check


def validate(cfg: DictConfig, world: int = 1) -> None:
    """Catch impossible values before anything is built, read or written."""
    for key in ("eval_every", "optim.batch_size", "optim.total_steps", "data.eval_batch_size", "optim.splits"):
        value = OmegaConf.select(cfg, key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{key}={value!r} must be a positive integer")
    if cfg.threads is not None and (not isinstance(cfg.threads, int) or cfg.threads <= 0):
        raise ConfigError(f"threads={cfg.threads!r} must be a positive integer or null")
    o = cfg.optim
    if not o.lr > 0:
        raise ConfigError(f"optim.lr={o.lr} must be positive")
    if any(not 0 < m < 1 for m in o.milestones):
        raise ConfigError(f"optim.milestones={list(o.milestones)} must be fractions of total_steps in (0, 1)")
    if o.schedule not in ("milestones", "plateau"):
        raise ConfigError(f"optim.schedule={o.schedule!r}; valid: milestones, plateau")
    if o.schedule == "plateau" and not cfg.data.get("val_size"):
        raise ConfigError("optim.schedule=plateau decides the lr drops on held-out training images, never on the "
                          "reported test set: set data.val_size (e.g. 10000), or use optim.schedule=milestones")
    if cfg.fast.get("compile") == "reduce-overhead" and o.splits > 1:
        raise ConfigError(f"fast.compile=reduce-overhead with optim.splits={o.splits}: CUDA graphs replay one "
                          f"captured forward, whose outputs the next chunk would overwrite before its backward; "
                          f"use fast.compile=default with splits, or optim.splits=1")
    if o.batch_size % (world * o.splits):
        raise ConfigError(f"optim.batch_size={o.batch_size} must divide evenly over {world} process(es) "
                          f"x optim.splits={o.splits}")
    try:
        arch_for(cfg.model.family, cfg.model.depth, width=cfg.model.width)
        if cfg.model.shortcut not in SHORTCUTS:
            raise ValueError(f"unknown shortcut {cfg.model.shortcut!r}; valid: {', '.join(SHORTCUTS)} (none = plain)")
    except ValueError as e:
        raise ConfigError(f"model: {e}") from None
    if cfg.get("logger") is not None:
        check(cfg.logger.name)  # an unknown tracker or a missing package: one line now, not after training


def config_dir() -> Path:
    """Hydra's config folder: the copy of experiments/ inside the package when installed from a wheel (it is
    shipped there, pyproject.toml), else the checkout's experiments/ beside the package."""
    package = Path(__file__).resolve().parents[1]  # repro/
    return package / "experiments" if (package / "experiments" / "config.yaml").is_file() \
        else package.parent / "experiments"


def search_folders(argv: list[str]) -> list[Path] | None:
    """The user's config folders added on the command line (`hydra.searchpath=[file:///my/configs]`, Hydra's
    search path), or None when one of them is a package (pkg://), whose choices are not listed here."""
    folders: list[Path] = []
    for arg in argv:
        key, _, value = arg.lstrip("+").partition("=")
        if key != "hydra.searchpath":
            continue
        for entry in value.strip("[]").split(","):
            entry = entry.strip().strip("'\"")
            if entry.startswith("pkg://"):
                return None
            if entry:
                folders.append(Path(entry.removeprefix("file://")))
    return folders


def check_choices(argv: list[str], experiments: Path) -> str | None:
    """A one-line error for an unknown `exp=`, `+net=` or `logger=` choice on the command line (Hydra's own
    message is a multi-line listing), else None. Comma-separated sweeps are checked choice by choice, against
    `experiments` and the user's folders on Hydra's search path."""
    if (extra := search_folders(argv)) is None:
        return None  # a config package on the search path: Hydra itself reports an unknown choice
    for arg in argv:
        key, _, value = arg.partition("=")
        group = {"exp": "exp", "+net": "net", "net": "net", "logger": "logger"}.get(key)
        if group is None or not value:
            continue
        known = sorted({p.stem for d in (experiments, *extra) for p in (d / group).glob("*.yaml")})
        for choice in value.split(","):
            if choice not in known:
                return f"unknown {group} {choice!r} ({arg}); known: {', '.join(known)}"
    return None
