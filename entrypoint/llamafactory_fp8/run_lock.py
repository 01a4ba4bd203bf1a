"""One live run per output_dir and node: a second launcher there is refused rather than "resuming" checkpoints a
live run is still writing. The lock is a POSIX record lock (fcntl.lockf) on a file in output_dir, one per node
(the nodes of one job share output_dir): the kernel drops it when the launcher dies, however it dies, so no stale
lock outlives a run. On NFS, Linux's NFSv4 client (and NFSv3 with its lock manager) takes the same lock on the
server, so launchers on other hosts see it; a filesystem that takes no locks at all is said once and the run goes
on unguarded."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from .errors import RunInProgress

LOCK_NAME = ".llamafactory_fp8.lock"


def lock_path(output_dir: Path, node_suffix: str) -> Path:
    return output_dir / f"{LOCK_NAME}{node_suffix}"


def held_elsewhere(path: Path) -> bool:
    """Whether a live launcher holds the lock at `path` (tried, and let go at once)."""
    try:
        descriptor = os.open(path, os.O_RDWR)
    except OSError:
        return False  # no lock file, or none this user can open: nothing to respect
    try:
        fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        return error.errno in (errno.EACCES, errno.EAGAIN)
    finally:
        os.close(descriptor)  # closing lets go of a lock this process took
    return False


class RunLock:
    """Held for as long as the launcher runs its trainer."""

    def __init__(self, path: Path):
        self.path, self.descriptor, self.unguarded = path, None, False

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(self.descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in (errno.EACCES, errno.EAGAIN):
                os.close(self.descriptor)
                raise RunInProgress(f"another launcher is running in {self.path.parent} ({self.path.name})") from None
            self.unguarded = True  # ENOLCK: this filesystem takes no locks
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.descriptor)
