"""The small JSON files the launcher, the trainer and the healthcheck leave for one another: each written whole
(a reader never sees half of one), each read back as its dataclass or not at all."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import TypeVar

Record = TypeVar("Record")


def write_record(record, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")  # writers that share a folder never share this file
    partial.write_text(json.dumps(asdict(record)))
    partial.replace(path)


def read_record(kind: type[Record], path: Path) -> Record | None:
    """None when there is none yet, or it cannot be read (an unusable folder is reported where it matters)."""
    try:
        return kind(**json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, TypeError):
        return None
