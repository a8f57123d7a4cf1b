"""Every error a user can act on, in one place, each ending a command with one line (the message names the
value or path and the fix) instead of a traceback: bad config, data or results (exit 2), a full disk or a lost
data-parallel peer (exit 1), Ctrl-C (exit 130, as shells report a SIGINT). Torch-free: every command uses it.

A full disk or quota is a fault met during the work (exit 1: free space, rerun the same command, which
resumes); a read-only or forbidden folder is bad input (exit 2: point results_dir= or --out elsewhere).
"""
from __future__ import annotations

import errno
import functools
import sys
from typing import Callable

INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a command stopped by Ctrl-C

# errno -> (cause, what to do, exit status)
_FULL = ("free some space (or point results_dir= / --out at another disk)", 1)
_FORBIDDEN = ("point results_dir= (or --out) at a folder you can write", 2)
STORAGE_ERRNOS = {
    errno.ENOSPC: ("no space left on the device", *_FULL),
    errno.EDQUOT: ("disk quota exceeded", *_FULL),
    errno.EROFS: ("read-only file system", *_FORBIDDEN),
    errno.EACCES: ("permission denied", *_FORBIDDEN),
    errno.EPERM: ("operation not permitted", *_FORBIDDEN),
}


class ConfigError(Exception):
    """A config value that cannot work (a `fast.*` switch included); the message names it and the fix."""


class DataError(Exception):
    """Missing, corrupt or malformed data: the message names the path and how to fix it."""


class ResultsError(Exception):
    """Malformed results or a run folder that cannot be used as asked; the message says what to do."""


class PeerLost(Exception):
    """A data-parallel run lost a peer (a rank killed, a collective past dist_timeout_s): one line, exit 1."""

    exit_code = 1


class StorageError(Exception):
    """A write refused by the disk or its permissions: the message names the path, the cause and the fix;
    `exit_code` is 1 for a full disk (a fault) and 2 for a folder that cannot be written (bad input)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


USER_ERRORS = (ConfigError, DataError, ResultsError, StorageError)  # one line each, not a traceback


def storage_error(e: BaseException, then: str = "") -> StorageError | None:
    """`e` as a StorageError (one line: path, cause, fix, then `then`), or None if it is not a storage fault."""
    if not isinstance(e, OSError) or e.errno not in STORAGE_ERRNOS:
        return None
    cause, fix, code = STORAGE_ERRNOS[e.errno]
    where = f"cannot write {e.filename}" if e.filename else "a write failed"
    return StorageError(f"{where}: {cause} ({errno.errorcode[e.errno]}); {fix}" + (f"; {then}" if then else ""), code)


def exit_code(e: BaseException) -> int:
    """The exit status of a command ended by the user-facing error `e`: its own, else 2 (bad input)."""
    return getattr(e, "exit_code", 2)


def command(main: Callable[..., int | None]) -> Callable[..., int | None]:
    """A command's `main`, ending on a user error (USER_ERRORS, PeerLost), Ctrl-C or a storage fault with one line
    on stderr instead of a traceback, and returning the exit status (exit_code(e), or 130) as `main` returns its
    own (`sys.exit(main())`); anything else propagates as it is."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except KeyboardInterrupt:
            print("interrupted (Ctrl-C); rerun the same command to start again (finished work is kept)",
                  file=sys.stderr, flush=True)
            return INTERRUPTED
        except (*USER_ERRORS, PeerLost, OSError) as e:
            if (err := storage_error(e) if isinstance(e, OSError) else e) is None:
                raise
            print(f"error: {err}", file=sys.stderr, flush=True)
            return exit_code(err)

    return wrapped
