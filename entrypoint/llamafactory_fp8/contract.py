"""The environment variables that carry a run between processes, each with its type, default and check: the ones
the user or the orchestrator sets (the project's home, the state folder, the node's place in a multi-node job, the
healthcheck's windows) and the ones the launcher sets for its ranks. The launcher, the ranks and the healthcheck
read them here and nowhere else; this module imports nothing of the planner, so a rank stays light."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from .errors import SettingInvalid

T = TypeVar("T")


def _whole(raw: str, minimum: int, maximum: int | None = None) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < minimum or (maximum is not None and value > maximum):
        upper = f" to {maximum}" if maximum is not None else " or more"
        raise ValueError(f"must be a whole number, {minimum}{upper}")
    return value


def _positive_int(raw: str) -> int:
    return _whole(raw, 1)


def _index(raw: str) -> int:
    return _whole(raw, 0)


def _port(raw: str) -> int:
    return _whole(raw, 1, 65535)


def _seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ValueError("must be a number of seconds above 0")
    return value


def _text(raw: str) -> str:
    if "\x00" in raw:
        raise ValueError("must not hold a NUL character")
    return raw


def _path(raw: str) -> Path:
    return Path(_text(raw))


def _profile(raw: str) -> tuple[int, int, Path]:
    steps, sep, directory = raw.partition(":")
    first, _, last = steps.partition("-")
    last = last or first
    if not sep or not directory or not first.isdigit() or not last.isdigit() or not 1 <= int(first) <= int(last):
        raise ValueError("must look like FIRST-LAST:DIRECTORY, with 1 <= FIRST <= LAST")
    return int(first), int(last), _path(directory)


def _factories(raw: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in raw.split(",") if name.strip())
    if not all(name.count(":") == 1 and all(name.partition(":")[::2]) for name in names):
        raise ValueError("must name factories as package.module:function, comma-separated")
    return names


@dataclass(frozen=True, kw_only=True)
class Setting(Generic[T]):
    """One environment variable."""

    name: str
    """The variable's name."""
    parse: Callable[[str], T]
    """Turns its text into the value; raises ValueError, with the rule in words, for text it refuses."""
    default: T | None
    """The value when the variable is unset or empty."""
    doc: str
    """What it does, for the README's table."""
    set_by: str
    """Who sets it: "user" (documented for users and orchestrators) or "launcher" (for its ranks)."""

    def read(self, environ: Mapping[str, str] = os.environ) -> T | None:
        raw = environ.get(self.name, "")
        if raw == "":
            return self.default
        try:
            return self.parse(raw)
        except ValueError as error:
            raise SettingInvalid(f"environment setting {self.name}={raw!r} {error}") from None


HOME = Setting(
    name="LLAMAFACTORY_FP8_HOME",
    parse=_path,
    default=None,
    doc="where the project's shipped configs/ and data/ are (the image sets it)",
    set_by="user",
)
LF_DIR = Setting(
    name="LLAMAFACTORY_FP8_LF_DIR",
    parse=_path,
    default=None,
    doc="where LLaMA-Factory's own data/, examples/ and key schema were unpacked at install time (the image sets it)",
    set_by="user",
)
STATE_DIR = Setting(
    name="LLAMAFACTORY_FP8_STATE_DIR",
    parse=_path,
    default=Path(tempfile.gettempdir()) / f"llamafactory-fp8-{os.getuid()}",
    doc="where each run leaves its state (stop requests, progress) for its ranks and the healthcheck; one per user",
    set_by="user",
)
STARTUP_GRACE_S = Setting(
    name="LLAMAFACTORY_FP8_STARTUP_GRACE_S",
    parse=_seconds,
    default=1800.0,
    doc="healthcheck: how long start-up (loading, preprocessing, the first step) may stand still",
    set_by="user",
)
STALL_AFTER_S = Setting(
    name="LLAMAFACTORY_FP8_STALL_AFTER_S",
    parse=_seconds,
    default=600.0,
    doc="healthcheck: how long training may go without a step (at least; five steps' time where longer)",
    set_by="user",
)
SAVE_LIMIT_S = Setting(
    name="LLAMAFACTORY_FP8_SAVE_LIMIT_S",
    parse=_seconds,
    default=1800.0,
    doc="healthcheck: how long one checkpoint's save may take",
    set_by="user",
)
HOST_MEMORY_GIB = Setting(
    name="LLAMAFACTORY_FP8_HOST_MEMORY_GIB",
    parse=lambda raw: float(_whole(raw, 1)),
    default=None,
    doc=(
        "the node's CPU memory the plan may use, in GiB (default: the container's memory limit, else the machine's; "
        "for a rehearsal, the job's node's: by default N times this machine's for N GPUs like this one)"
    ),
    set_by="user",
)
NNODES = Setting(name="NNODES", parse=_positive_int, default=1, doc="nodes in the job (torchrun's name)", set_by="user")
NODE_RANK = Setting(name="NODE_RANK", parse=_index, default=None, doc="this node's rank, 0 to NNODES-1", set_by="user")
JOB_COMPLETION_INDEX = Setting(
    name="JOB_COMPLETION_INDEX",
    parse=_index,
    default=None,
    doc="an Indexed Job's completion index: the node rank where NODE_RANK is unset",
    set_by="user",
)
MASTER_ADDR = Setting(
    name="MASTER_ADDR", parse=_text, default=None, doc="the address of node 0 in a multi-node job", set_by="user"
)
MASTER_PORT = Setting(name="MASTER_PORT", parse=_port, default=29500, doc="the port node 0 listens on", set_by="user")
PROGRESS_DIR = Setting(
    name="LLAMAFACTORY_FP8_PROGRESS_DIR",
    parse=_path,
    default=None,
    doc="the folder where each rank writes its progress record",
    set_by="launcher",
)
COLLECTIVE_TIMEOUT_S = Setting(
    name="LLAMAFACTORY_FP8_COLLECTIVE_TIMEOUT_S",
    parse=_positive_int,
    default=None,
    doc="the process group's timeout: the run's ddp_timeout",
    set_by="launcher",
)
FP8_RECIPE = Setting(
    name="LLAMAFACTORY_FP8_RECIPE",
    parse=_text,
    default=None,
    doc="the fp8_recipe.RECIPES entry a rank installs",
    set_by="launcher",
)
STOP_REQUEST = Setting(
    name="LLAMAFACTORY_FP8_STOP_REQUEST",
    parse=_path,
    default=None,
    doc="the file whose presence asks every rank to checkpoint and stop",
    set_by="launcher",
)
STOP_ANSWER = Setting(
    name="LLAMAFACTORY_FP8_STOP_ANSWER",
    parse=_path,
    default=None,
    doc="the file where rank 0 says where it stopped",
    set_by="launcher",
)
WORKER = Setting(
    name="LLAMAFACTORY_FP8_WORKER",
    parse=lambda raw: raw == "1",
    default=False,
    doc="set by a rank's watcher for the trainer it starts",
    set_by="launcher",
)
CALLBACKS = Setting(
    name="LLAMAFACTORY_FP8_CALLBACKS",
    parse=_factories,
    default=(),
    doc="TrainerCallbacks of your own for every rank: `package.module:factory`, comma-separated",
    set_by="user",
)
REHEARSAL = Setting(
    name="LLAMAFACTORY_FP8_REHEARSAL",
    parse=_text,
    default=None,
    doc="the rehearsal a rank runs (rehearsal.RehearsalRequest as JSON): rank 0 of the job alone on a fake group",
    set_by="launcher",
)
PROFILE = Setting(
    name="LLAMAFACTORY_FP8_PROFILE",
    parse=_profile,
    default=None,
    doc="benchmarks: profile steps FIRST-LAST into DIRECTORY (`FIRST-LAST:DIRECTORY`), then end the run",
    set_by="user",
)

SETTINGS = (
    HOME,
    LF_DIR,
    STATE_DIR,
    STARTUP_GRACE_S,
    STALL_AFTER_S,
    SAVE_LIMIT_S,
    HOST_MEMORY_GIB,
    NNODES,
    NODE_RANK,
    JOB_COMPLETION_INDEX,
    MASTER_ADDR,
    MASTER_PORT,
    PROGRESS_DIR,
    COLLECTIVE_TIMEOUT_S,
    FP8_RECIPE,
    STOP_REQUEST,
    STOP_ANSWER,
    WORKER,
    CALLBACKS,
    REHEARSAL,
    PROFILE,
)


def check_all(environ: Mapping[str, str] = os.environ) -> None:
    """Read every setting once, so that a bad value is refused at launch in one line, not met later by a rank or
    by the healthcheck."""
    for setting in SETTINGS:
        setting.read(environ)
