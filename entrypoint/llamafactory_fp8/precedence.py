"""The one rule every choice follows, and the one vocabulary for where a value came from."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeVar

Source = Literal["flag", "yaml", "override", "auto", "resume"]
"""flag: the launcher's own command-line flag (--bf16, --strategy); yaml: the user's training YAML; override: the
user's key=value on the command line; auto: chosen by the launcher; resume: set to continue an interrupted run."""

T = TypeVar("T")


def precedence(
    flag: T | None, explicit: T | None, auto: Callable[[], T], explicit_source: Source = "yaml"
) -> tuple[T, Source]:
    """A command-line flag > the user's explicit key (in the YAML, or as key=value: `explicit_source`) > auto."""
    if flag is not None:
        return flag, "flag"
    if explicit is not None:
        return explicit, explicit_source
    return auto(), "auto"
