"""The process `accelerate launch` starts for each rank runs the trainer as its own child and waits for it, so that
how a trainer ended is known even when it could not say so itself: killed outright (SIGKILL, as the out-of-memory
killer does) leaves no traceback and no record of its own. Signals that the watcher receives are passed on.
Imports nothing heavy: the watcher should cost the node almost nothing."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Mapping

from . import contract
from .progress import KILLED_BY, reporter_from_environment

PASSED_ON = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def is_worker(environ: Mapping[str, str] = os.environ) -> bool:
    return contract.WORKER.read(environ)


def watch(command: list[str]) -> int:
    """Run `command` as the worker; return its exit code, or 128+N when signal N ended it (recorded, by name)."""
    reporter = reporter_from_environment()
    if reporter is not None:
        reporter.enter("starting")
    child = subprocess.Popen(command, env={**os.environ, contract.WORKER.name: "1"}, preexec_fn=_end_with_the_watcher)
    for signum in PASSED_ON:
        signal.signal(signum, lambda received, _frame: child.send_signal(received))
    code = child.wait()
    if code < 0:
        if reporter is not None:
            reporter.end(KILLED_BY + signal.Signals(-code).name)
        return 128 - code
    return code


def _end_with_the_watcher() -> None:
    """Linux's parent-death signal: a watcher killed outright (torchrun's SIGKILL after its grace) must not leave
    its trainer running, and holding the GPU, behind it."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (AttributeError, OSError):
        pass  # not Linux: the process group that torchrun and the launcher signal still reaches both


def main() -> None:
    raise SystemExit(watch([sys.executable, "-m", "llamafactory_fp8.rank", *sys.argv[1:]]))
