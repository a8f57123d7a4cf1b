"""How a run meets signals: SIGTERM/SIGUSR1/SIGUSR2 (a scheduler's preemption) and SIGINT (Ctrl-C) as a flag
the loop checks once per step, and the fault-injection points the reliability tests use."""
from __future__ import annotations

import errno
import os
import signal
import sys

from repro.errors import INTERRUPTED


def fault_point(name: str, step: int) -> None:
    """Fault injection for the reliability tests: REPRO_FAULT=<name>:<step> kills this process with
    SIGKILL when the loop reaches that point ('kill': the end of any step; 'term' sends SIGTERM there, as a
    scheduler would; 'term_launcher': rank 0 sends SIGTERM to its parent, torchrun, as SLURM signals the job
    step, which hands it on to every rank; 'kill_launcher': rank 0 SIGKILLs torchrun alone, as an
    out-of-memory kill or a closed terminal does; 'stop': SIGSTOP, a peer alive but stalled; 'raise' raises;
    'int' sends SIGINT, Ctrl-C, and 'int2' two of them, a second Ctrl-C while the first is handled; 'enospc'
    fails the checkpoint write as a full disk does; 'capture' fails a CUDA graph's capture).
    REPRO_FAULT_RANK=<r>: only rank r acts. Unset in normal use."""
    rank = os.environ.get("RANK", "0")
    if os.environ.get("REPRO_FAULT") == f"{name}:{step}" and os.environ.get("REPRO_FAULT_RANK", rank) == rank:
        if name == "raise":
            raise RuntimeError(f"injected failure at step {step}")
        if name == "capture":
            raise RuntimeError(f"injected capture failure at step {step}")
        if name == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if name in ("int", "int2"):
            for _ in range(1 if name == "int" else 2):
                os.kill(os.getpid(), signal.SIGINT)
            return
        if name in ("term_launcher", "kill_launcher"):
            if rank == "0":
                os.kill(os.getppid(), signal.SIGTERM if name == "term_launcher" else signal.SIGKILL)
            return
        if name == "stop":  # a test waits for this line (progress), then knows the process holds still
            print(f"[fault] pid {os.getpid()} stops at step {step}", flush=True)
        os.kill(os.getpid(), {"term": signal.SIGTERM, "stop": signal.SIGSTOP}.get(name, signal.SIGKILL))


class SignalFlag:
    """SIGTERM/SIGUSR1/SIGUSR2 (what SLURM and submitit send before a kill) and SIGINT (Ctrl-C) set a flag
    that the loop checks once per step; the loop then checkpoints at that step and hands the signal on to the
    previous handler (Ctrl-C: exit 130, no traceback). A second Ctrl-C while the first is handled exits at
    once: the last checkpoint on disk stands (an atomic write in flight leaves it whole). SIGINT is left alone
    where the process started with it ignored (a background job, nohup), as shells intend."""

    NAMES = ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT")

    def __init__(self):
        self.signum: int | None = None
        self.previous: dict = {}

    def __enter__(self) -> "SignalFlag":
        for name in self.NAMES:
            if hasattr(signal, name):
                s = getattr(signal, name)
                if s == signal.SIGINT and signal.getsignal(s) in (signal.SIG_IGN, None):
                    continue
                self.previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            os.write(2, b"second Ctrl-C: stopped at once; the last checkpoint stands: rerun the same command "
                        b"to resume from it\n")
            os._exit(INTERRUPTED)
        if self.signum is None:
            self.signum = signum

    def __exit__(self, *exc) -> None:
        for s, h in self.previous.items():
            signal.signal(s, h)
        self.previous = {}

    def pass_on(self, signum: int) -> None:
        """Restore the previous handler and re-deliver the signal (submitit requeues on USR2; the default
        action ends the process, as SLURM expects), then exit 128+signum if still alive. Ctrl-C: exit 130
        (Python's own handler would raise KeyboardInterrupt: a traceback for a clean stop)."""
        self.__exit__()
        if signum == signal.SIGINT:
            sys.exit(INTERRUPTED)
        signal.raise_signal(signum)
        sys.exit(128 + signum)
