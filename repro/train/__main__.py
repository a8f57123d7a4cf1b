"""`python -m repro.train [-m] exp=...` (and `repro-train`): Hydra's command line over repro.train.loop.run.
Bad input is one line (exit 2); in a multirun a failing run is recorded and the sweep goes on."""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
import torch.distributed as dist
from omegaconf import DictConfig

from repro.errors import USER_ERRORS, PeerLost, command, exit_code
from repro.train.config import check_choices, config_dir
from repro.train.loop import run
from repro.train.sweep import is_multirun, mark_failed, sweep_interrupted


@hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> str:
    """One run. Bad input ends it with one clear line (exit 2); in a multirun, a failing run is recorded
    and the sweep goes on with the next one (repro.train.sweep.SweepSummary then exits 1)."""
    multirun = is_multirun()
    if multirun and sweep_interrupted():
        return "not started"  # Ctrl-C stopped the sweep (repro.train.sweep.SweepInterrupt)
    try:
        return run(cfg)
    except (*USER_ERRORS, PeerLost) as e:  # one line: bad input exits 2, a lost peer or a full disk 1
        print(f"error: {e}", file=sys.stderr, flush=True)
        if not multirun:
            sys.exit(exit_code(e))
        mark_failed(str(e))
        return "failed" if exit_code(e) == 1 else "error"
    except Exception as e:
        if not multirun:
            raise
        print(f"error: run failed ({type(e).__name__}: {e}); continuing with the next run", file=sys.stderr,
              flush=True)
        mark_failed(f"{type(e).__name__}: {e}")
        return "failed"
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@command  # Ctrl-C outside a run's loop (Hydra composing, a parallel sweep's launcher waiting): one line
def cli() -> int | None:
    """`repro-train` / `python -m repro.train`: Hydra's command line, an unknown experiment or net one line."""
    # Hydra admits launchers only from the `hydra_plugins` namespace package: ours (hydra/launcher=pack) ships
    # in repro/_plugins, put on the path by the command that may need it (never by an import)
    sys.path.append(str(Path(__file__).resolve().parents[1] / "_plugins"))
    if (bad := check_choices(sys.argv[1:], config_dir())) is not None:
        print(f"error: {bad}", file=sys.stderr)
        sys.exit(2)
    main()


if __name__ == "__main__":
    sys.exit(cli())
