"""What a finished run measures and keeps after training: the final weights (Fig. 7), the per-layer
response std on the test set (Fig. 7, CIFAR), the multi-crop evaluation (ImageNet Tables 2 and 3). Then
the checkpoint is no longer needed."""
from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from .rundir import atomic_write
from .sources import Source


def finish(model: torch.nn.Module, src: Source, run_dir: Path, device: torch.device, *, save_model: bool,
           analyze_responses: bool, final_crops: int | None, eval_batch_size: int) -> None:
    if save_model:
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        atomic_write(run_dir / "model.pt", buf.getvalue())
    if analyze_responses and src.tensors is not None:
        from .analysis import write_responses

        write_responses(model, src.tensors, run_dir / "responses.csv", eval_batch_size)
    if src.folders is not None and final_crops:
        from .imagenet import evaluate_crops

        result = evaluate_crops(model, src.folders, final_crops, eval_batch_size, device)
        atomic_write(run_dir / "final.json", (json.dumps(result, indent=2) + "\n").encode())
        print(f"[train] {final_crops}-crop evaluation: top-1 {100 * result['top1_err']:.2f}% "
              f"top-5 {100 * result['top5_err']:.2f}%", flush=True)
    (run_dir / "checkpoint.pt").unlink(missing_ok=True)
