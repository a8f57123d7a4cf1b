"""A run's protocol: everything in its config and metadata that can change its numbers, and nothing else.

Two runs are compared, averaged or pooled only when their protocols are equal; seeds are the only thing
averaged over. The protocol is derived from a run folder's `config.yaml` + `meta.json` (so old and
hand-made folders work too) and has a short readable form, its deviations from the paper's protocol
(§4.2 for CIFAR-10, §3.4 for ImageNet): `paper` when there are none, else e.g. `8000 it, bf16`.

In the protocol: the data (name, which copy of the files, sizes, val split), the net's width, every
optimiser key of the schedule in use, `splits`, the arithmetic (bf16 autocast or fp32, as resolved for the
run) and the evaluation interval (the training error of a row is the mean since the previous row).
Not in it: where and how fast it ran (device, threads, paths, the bit-exact fast switches), what is done
after training (saving weights, Fig. 7's analysis, 10-crop evaluation), the seed, and the net itself
(depth, shortcut), which is the other half of a comparison's key. Torch-free: the plots read it.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

# The keys of a resolved config that can change a run's numbers: its protocol, by construction. A key not
# listed here changes no run's identity, so adding an operational key (a tracker, a path, a timeout) never makes
# committed runs differ from their saved configs. tests/test_config.py refuses a key of any experiment that is
# in neither this list nor OPERATIONAL (nor fast.*, the bit-exact speed switches), so each new key is classified.
PROTOCOL_KEYS = frozenset({
    "model.family", "model.width",
    "data.name", "data.crop", "data.train_size", "data.test_size", "data.val_size", "data.synthetic_seed",
    "data.lighting",
    "optim.batch_size", "optim.lr", "optim.momentum", "optim.weight_decay", "optim.total_steps", "optim.splits",
    "optim.schedule", "optim.milestones", "optim.gamma", "optim.plateau_patience", "optim.plateau_threshold",
    "optim.plateau_max_decays", "optim.warmup_lr", "optim.warmup_until_err", "optim.warmup_from_depth",
    "optim.warmup_check_every", "eval_every",
})
# Keys that never change a run's numbers (the net and the seed are the other half of a comparison's key).
OPERATIONAL = frozenset({
    "exp_name", "seed", "device", "deterministic", "threads", "results_dir", "overwrite", "save_model",
    "final_crops", "analyze_responses", "model.depth", "model.shortcut", "data.root", "data.download", "data.url",
    "data.fallback", "data.workers", "data.eval_batch_size", "data.format", "lock_wait_s", "dist_timeout_s",
    "data.decoder", "data.decode", "diagnostics.every", "diagnostics.batches",
    "logger.name", "logger.dir", "logger.project", "logger.entity", "logger.mode",
})
# The version of repro.data.imagenet's random stream (which draws a sample position gets); like the seed it is not
# part of the protocol, but a run is only ever continued on the stream it started on (repro.train.rundir.run_key).
# 1: per-image torch global RNG inside torchvision's transforms (until 2026-12); 2: repro.data.imagenet.draw.
IMAGEFOLDER_STREAM = 2
# Keys added to the config over time, with the value older run folders were made with.
ADDED_LATER = {"optim.splits": 1, "optim.schedule": "milestones", "data.val_size": 0, "data.train_size": 0,
               "data.test_size": 0}
SCHEDULE_KEYS = {"milestones": ("optim.milestones",),
                 "plateau": ("optim.plateau_patience", "optim.plateau_threshold", "optim.plateau_max_decays")}
WARMUP_KEYS = ("optim.warmup_until_err", "optim.warmup_from_depth", "optim.warmup_check_every")

# The paper's protocols, in the identity's terms. §4.2: 50k/10k official CIFAR-10 images, width 16, SGD lr 0.1
# momentum 0.9 weight decay 1e-4 batch 128, /10 at 32k and 48k of 64k, warm-up at 0.01 until the training
# error is below 80% for 110 layers and deeper; fp32 (2015). `splits` 1: the batch of 128 as one BN batch
# (the paper's 2 GPUs saw 64 each; optim.splits=2 reproduces that). §3.4: ImageNet, width 64, batch 256,
# lr 0.1 /10 on plateaus, up to 60e4 iterations.
PAPER: dict[str, dict[str, Any]] = {
    "cifar10": {"data.name": "cifar10", "data.copy": "official", "model.width": 16, "optim.total_steps": 64_000,
                "optim.batch_size": 128, "data.train_size": 0, "data.test_size": 0, "data.val_size": 0,
                "optim.lr": 0.1, "optim.momentum": 0.9, "optim.weight_decay": 1e-4, "optim.schedule": "milestones",
                "optim.milestones": [0.5, 0.75], "optim.gamma": 0.1, "optim.warmup_lr": 0.01,
                "optim.warmup_until_err": 0.8, "optim.warmup_from_depth": 110, "optim.warmup_check_every": 10,
                "optim.splits": 1, "arithmetic": "fp32", "eval_every": 500},
    "imagenet": {"data.name": "imagenet", "data.copy": "unrecorded", "model.width": 64, "optim.total_steps": 600_000,
                 "optim.batch_size": 256, "data.val_size": 0, "data.lighting": 0.1, "data.crop": 224, "optim.lr": 0.1,
                 "optim.momentum": 0.9, "optim.weight_decay": 1e-4, "optim.schedule": "plateau",
                 "optim.plateau_patience": 6, "optim.plateau_threshold": 0.001, "optim.plateau_max_decays": 3,
                 "optim.gamma": 0.1, "optim.warmup_lr": None, "optim.splits": 1, "arithmetic": "fp32",
                 "eval_every": 5000},
}
# md5 of each batch file of the official CIFAR-10 release (torchvision's list)
OFFICIAL_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
# Copies of CIFAR-10 known by their batch files' md5s (data_copy below): the official release, and the
# copy beside this repository (../shared/data/cifar10, PROVENANCE.md: 89% of its images decoded from JPEG).
KNOWN_COPIES = {"e59f1be4": "JPEG-derived copy"}


EMBEDDED_TASKS = ("synthetic", "deadleaves")  # the tasks made from data.synthetic_seed (repro.data.cifar.EMBEDDED)

def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def data_copy(md5: dict[str, str] | None) -> str:
    """'official', a known copy's name, 'copy <hash>' for another, 'unrecorded' when meta.json has no md5s."""
    if not md5:
        return "unrecorded"
    if md5 == OFFICIAL_MD5:
        return "official"
    short = hashlib.md5("".join(md5[k] for k in sorted(md5)).encode()).hexdigest()[:8]
    return KNOWN_COPIES.get(short, f"copy {short}")


def folder_of(source: str) -> str:
    """The data folder's name in meta.json's data_source ('imagenette from ../x/imagenette-4k (decoded ...)' ->
    'imagenette-4k'): which copy of an ImageFolder data set a run read; 'unrecorded' when it does not say."""
    if " from " not in source:
        return "unrecorded"
    path = source.split(" from ", 1)[1].split(" (", 1)[0].rstrip("/")
    return path.rsplit("/", 1)[-1] or "unrecorded"


def arithmetic(config: dict, meta: dict) -> str:
    """'bf16' or 'fp32' as the run resolved it (meta.json), else as its config forced it, else 'unrecorded'."""
    bf16 = (meta.get("fast") or {}).get("bf16", (config.get("fast") or {}).get("bf16"))
    return {True: "bf16", False: "fp32"}.get(bf16, "unrecorded")


def identity(config: dict, meta: dict) -> dict[str, Any]:
    """The protocol of a run as a flat dict (see the module docstring)."""
    flat = {**ADDED_LATER, **flatten(config)}
    family = flat.get("model.family", "cifar10")
    ident = {k: v for k, v in flat.items() if k in PROTOCOL_KEYS}
    if ident.get("model.width") is None:
        ident["model.width"] = PAPER.get(family, {}).get("model.width")
    schedule = ident.get("optim.schedule", "milestones")
    for name, keys in SCHEDULE_KEYS.items():  # the other schedule's keys change nothing
        if name != schedule:
            for k in keys:
                ident.pop(k, None)
    if ident.get("optim.warmup_lr") is None:
        for k in WARMUP_KEYS:
            ident.pop(k, None)
    if ident.get("data.name") not in EMBEDDED_TASKS:
        ident.pop("data.synthetic_seed", None)
    if ident.get("data.name") == "cifar10":
        ident["data.copy"] = data_copy(meta.get("data_md5"))
    elif ident.get("data.name") == "imagenet":
        ident["data.copy"] = "unrecorded"
    elif ident.get("data.name") == "imagenette":  # which files: a sample, the 160 px or 320 px release, ...
        ident["data.copy"] = folder_of(meta.get("data_source") or "")
    if family == "imagenet":
        ident.setdefault("data.crop", 224)  # §3.4's crops; folders made before data.crop existed used them
    else:
        ident.pop("data.crop", None)
    ident["arithmetic"] = arithmetic(config, meta)
    # the BN batch is what splits and data-parallel processes both change: 2 processes of a batch of 128 train
    # as one process with optim.splits=2 (BN over 64 each), so `optim.splits` here counts the chunks of both
    ident["optim.splits"] = ident.get("optim.splits", 1) * int(meta.get("processes") or 1)
    return dict(sorted(ident.items()))


def protocol_key(ident: dict[str, Any]) -> str:
    """A stable hashable key for grouping (equal protocols, equal keys)."""
    return hashlib.md5(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _num(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def deviations(ident: dict[str, Any], long: bool = False) -> list[str]:
    """How `ident` differs from the paper's protocol of its family, one phrase per difference, in a fixed
    order; `long` gives the sentence form used in meta.json and the report's scale table."""
    family = ident.get("model.family", "cifar10")
    paper = PAPER.get(family, PAPER["cifar10"])
    out = []
    keys = list(paper) + [k for k in ident if k not in paper and k != "model.family"]
    for key in keys:
        ours, theirs = ident.get(key), paper.get(key)
        if key not in ident or ours == theirs or (key in ("data.train_size", "data.test_size") and not ours):
            continue  # (a size of 0 is the whole set: ImageNet's protocol has no such key)
        out.append(_phrase(key, ours, theirs, ident, long))
    return [p for p in out if p]


def _phrase(key: str, ours: Any, theirs: Any, ident: dict, long: bool) -> str:
    name = ident.get("data.name")
    if key == "data.name":
        pretty = {"synthetic": "synthetic", "deadleaves": "dead leaves", "imagenette": "Imagenette",
                  "cifar10": "CIFAR-10", "imagenet": "ImageNet"}
        return f"data: {pretty.get(ours, ours)}, not the paper's" if long else pretty.get(ours, str(ours))
    if key == "data.synthetic_seed":
        return "" if ours == 0 else (f"{name} task of seed {ours}" if long else f"{name} seed {ours}")
    if key == "data.copy":
        if name == "imagenette":
            return f"Imagenette files of {ours}" if long else ours
        if name not in ("cifar10",):
            return ""
        if ours == "unrecorded":
            return "CIFAR-10 copy not recorded (meta.json has no data_md5)" if long else "copy unrecorded"
        return f"CIFAR-10 {ours} (not the official files)" if long else ours
    if key == "optim.total_steps":
        scaled = " (lr schedule compressed proportionally)" if ident.get("optim.milestones") else ""
        return (f"{ours} of {theirs} iterations{scaled}" if long else f"{ours} it")
    if key == "optim.milestones" and not ours:  # exp=convergence: the first lr phase on its own
        return f"no lr drop (paper at {'/'.join(map(_num, theirs))} of the iterations)" if long else "no lr drop"
    if key == "model.width":
        return f"width {ours} (paper {theirs})" if long else f"width {ours}"
    if key == "data.crop":
        return f"{ours} px crops, the resize geometry scaled with them (paper {theirs})" if long else f"{ours} px"
    if key == "optim.batch_size":
        return f"batch {ours} (paper {theirs})" if long else f"batch {ours}"
    if key in ("data.train_size", "data.test_size"):
        what = "training" if key == "data.train_size" else "test"
        return f"first {ours} {what} images only" if long else f"{ours} {what} img"
    if key == "data.val_size":
        return f"{ours} training images held out for validation" if long else f"val {ours}"
    if key == "arithmetic":
        if ours == "bf16":
            return "bf16 autocast arithmetic (the paper trained in fp32)" if long else "bf16"
        return "arithmetic not recorded" if long else "arithmetic unrecorded"
    if key == "optim.splits":
        per = ident.get("optim.batch_size", 0) // max(int(ours), 1)
        return f"BN statistics over {per} images ({ours} chunks of a batch: optim.splits x processes)" if long \
            else f"BN over {per}"
    if key == "eval_every":
        return f"evaluated every {ours} iterations (training error averaged over that window)" if long \
            else f"eval every {ours}"
    short = key.split(".")[-1]
    if isinstance(ours, list):
        ours = "/".join(_num(v) for v in ours)
    return f"{short} {_num(ours)} (paper {theirs if not isinstance(theirs, list) else '/'.join(map(_num, theirs))})" \
        if long else f"{short} {_num(ours)}"


def label(ident: dict[str, Any]) -> str:
    """The short readable protocol: 'paper', or its deviations, e.g. 'synthetic, width 8, 400 it, bf16'."""
    return ", ".join(deviations(ident)) or "paper"


def description(ident: dict[str, Any]) -> str:
    """The long form for meta.json and the report: 'paper protocol' or 'differs from the paper: ...'."""
    devs = deviations(ident, long=True)
    return "paper protocol" if not devs else "differs from the paper: " + "; ".join(devs)
