"""Where the files taken from the pinned LLaMA-Factory release live, all made at install time: its source archive's
`data/` and `examples/` (docker/llamafactory_sdist.py) and the schema of its keys (lf_schema_build.py). The image
names the folder in LLAMAFACTORY_FP8_LF_DIR; a source checkout has it where scripts/bootstrap put it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from . import contract

CHECKOUT_LF_DIR = Path(__file__).resolve().parents[2] / "build" / "llamafactory"  # scripts/bootstrap's


def lf_dir(environ: Mapping[str, str] = os.environ) -> Path:
    configured = contract.LF_DIR.read(environ)
    return configured if configured is not None else CHECKOUT_LF_DIR


def lf_data_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """LLaMA-Factory's own `data/`: its dataset_info.json and demo datasets (alpaca_en_demo, identity, ...)."""
    return lf_dir(environ) / "data"


def lf_examples_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """LLaMA-Factory's own `examples/`: the YAMLs its users start from."""
    return lf_dir(environ) / "examples"


def lf_schema_path(environ: Mapping[str, str] = os.environ) -> Path:
    return lf_dir(environ) / "schema.json"
