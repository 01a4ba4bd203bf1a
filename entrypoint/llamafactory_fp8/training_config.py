"""Load a LLaMA-Factory training YAML and pull out the few facts the launcher decides on."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigInvalid, ConfigMissing, ConfigNotMapping, ConfigUnparsable, OutputNotWritable

FP8_CAPABLE_STAGES = ("pt", "sft")  # LLaMA-Factory configures FP8 only in these trainers


@dataclass(frozen=True)
class TrainingConfig:
    """A training YAML as LLaMA-Factory will read it, with the user's key=value overrides applied."""

    path: Path
    values: dict[str, Any]
    overrides: dict[str, str]  # as typed on the command line, passed on to LLaMA-Factory unchanged

    @property
    def model(self) -> str:
        return str(self.values["model_name_or_path"])

    @property
    def output_dir(self) -> Path:
        return Path(str(self.values["output_dir"]))

    @property
    def stage(self) -> str:
        return str(self.values.get("stage", "sft"))

    @property
    def finetuning_type(self) -> str:
        return str(self.values.get("finetuning_type", "lora"))

    @property
    def deepspeed(self) -> str | None:
        value = self.values.get("deepspeed")
        return None if value is None else str(value)

    @property
    def asks_for_fp8(self) -> bool:
        return bool(self.values.get("fp8", False))


def load_training_config(path: Path, overrides: list[str]) -> TrainingConfig:
    """Read and check the YAML; every problem becomes a one-line LaunchError."""
    if not path.is_file():
        raise ConfigMissing(f"training config not found: {path}")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigUnparsable(f"training config is not valid YAML{where}: {path}") from None
    if not isinstance(values, dict):
        raise ConfigNotMapping(f"training config must be a YAML mapping of LLaMA-Factory keys, got {_kind(values)}: {path}")
    parsed = parse_overrides(overrides)
    values = {**values, **{key: yaml.safe_load(raw) if raw else "" for key, raw in parsed.items()}}
    for key in ("model_name_or_path", "output_dir"):
        if not values.get(key):
            raise ConfigInvalid(f"training config has no {key}: {path}")
    return TrainingConfig(path=path, values=values, overrides=parsed)


def parse_overrides(overrides: list[str]) -> dict[str, str]:
    """key=value pairs as LLaMA-Factory's CLI takes them; the values stay text (YAML types them when read)."""
    parsed = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigInvalid(f"override must look like key=value, got: {item}")
        parsed[key] = raw
    return parsed


def check_output_dir_writable(output_dir: Path) -> None:
    """Fail before launching rather than after the first checkpoint."""
    existing = output_dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise OutputNotWritable(f"output_dir is not writable: {output_dir} ({existing} does not allow writing)")


def _kind(value: Any) -> str:
    return "an empty file" if value is None else f"a {type(value).__name__}"
