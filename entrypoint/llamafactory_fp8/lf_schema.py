"""LLaMA-Factory's keys checked before anything loads: names, types, choices and obvious ranges, against the schema
that lf_schema_build.py wrote at install time from LLaMA-Factory's own dataclasses. Imports neither torch nor
Transformers: a check takes milliseconds, where LLaMA-Factory finds the same mistakes only after loading the model.

Values arrive as PyYAML typed them (the YAML, then the key=value overrides). LLaMA-Factory reads the same text with
OmegaConf, whose YAML differs in two ways that matter here: `1e-5` is a number to OmegaConf and text to PyYAML, and
a date stays text. Its argument parser converts nothing after that, so a value of the wrong type (`learning_rate:
abc`, `max_steps: ""`) reaches the Trainer as it is."""

from __future__ import annotations

import datetime
import difflib
import importlib.metadata
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .lf_files import lf_schema_path

# OmegaConf's float, as its YAML loader adds it (omegaconf/_yaml.py), where PyYAML wants a dot: 1e-5, 5E+3
_OMEGACONF_ONLY_FLOAT = re.compile(r"[-+]?[0-9]+(?:_[0-9]+)*[eE][-+]?[0-9]+")
_IN_WORDS = {
    "bool": "true or false",
    "int": "an integer",
    "float": "a number",
    "str": "text",
    "list": "a list",
    "dict": "a mapping",
    "null": "null",
}
# Values LLaMA-Factory or Transformers would take without complaint and fail on, or misuse, after loading
RANGES = {
    "learning_rate": (0, None),
    "num_train_epochs": (0, None),
    "per_device_train_batch_size": (1, None),
    "per_device_eval_batch_size": (1, None),
    "gradient_accumulation_steps": (1, None),
    "cutoff_len": (1, None),
    "lora_rank": (1, None),
    "warmup_ratio": (0, 1),  # Transformers 5 takes it as warmup_steps, where 2 means two steps
    "warmup_steps": (0, None),
}
NO_STEP_LIMIT = -1  # Transformers' max_steps default: any value <= 0 means "train num_train_epochs"


class SchemaUnavailable(Exception):
    """The schema is missing, unreadable, or built for another LLaMA-Factory than the one installed."""


@dataclass(frozen=True, kw_only=True)
class Accepted:
    type: str  # bool, int, float, str, list, dict, null, or any (a class no YAML value builds: not checked)
    choices: tuple | None = None  # the values allowed, where LLaMA-Factory or Transformers lists them


@dataclass(frozen=True, kw_only=True)
class KeySpec:
    accepts: tuple[Accepted, ...]  # a value passes when one of these takes it
    default: Any = None  # LLaMA-Factory's default (None also where it has none)


@dataclass(frozen=True, kw_only=True)
class Schema:
    llamafactory_version: str  # the release whose dataclasses it was built from
    keys: Mapping[str, KeySpec]


@dataclass(frozen=True, kw_only=True)
class Problem:
    key: str  # the key as the user wrote it
    what: str  # what is wrong and what would be right, in words, on one line
    severity: Literal["error", "warning"]  # an error stops the launch; a warning is said and the run goes on

    def __str__(self) -> str:
        return f"{self.key}: {self.what}"


def read_schema(path: Path) -> Schema:
    try:
        written = json.loads(path.read_text())
    except OSError as error:
        raise SchemaUnavailable(
            f"LLaMA-Factory's key schema cannot be read: {path} ({error.strerror}); scripts/bootstrap builds it"
        ) from None
    except ValueError:
        raise SchemaUnavailable(f"LLaMA-Factory's key schema is not valid JSON: {path}") from None
    keys = {
        name: KeySpec(
            accepts=tuple(Accepted(type=a["type"], choices=_tuple(a.get("choices"))) for a in spec["accepts"]),
            default=spec.get("default"),
        )
        for name, spec in written["keys"].items()
    }
    return Schema(llamafactory_version=written["llamafactory"], keys=keys)


def load_schema(environ: Mapping[str, str] = os.environ) -> Schema:
    """The installed LLaMA-Factory's schema (lf_files.py says where), refused when built for another release."""
    path = lf_schema_path(environ)
    schema = read_schema(path)
    installed = importlib.metadata.version("llamafactory")
    if schema.llamafactory_version != installed:
        raise SchemaUnavailable(
            f"{path} describes LLaMA-Factory {schema.llamafactory_version}, but {installed} is installed: "
            "run scripts/bootstrap again"
        )
    return schema


def check_keys(values: Mapping[str, Any], schema: Schema) -> tuple[Problem, ...]:
    """Every problem with `values` (LLaMA-Factory keys, YAML-typed), in the order the keys came."""
    problems = []
    for key, value in values.items():
        spec = schema.keys.get(key)
        problem = _unknown(key, schema) if spec is None else _wrong_type_or_choice(key, value, spec)
        problem = problem or _out_of_range(key, value, values, schema)
        if problem:
            problems.append(problem)
    return tuple(problems)


# Transformers 4's TrainingArguments fields that 5 dropped and LLaMA-Factory's own FP8 FSDP example still writes,
# with what says the same now (Transformers' TrainingArguments reads both from fsdp_config)
RETIRED_KEYS = {
    "fsdp_transformer_layer_cls_to_wrap": (
        "Transformers 5 reads it in fsdp_config as transformer_layer_cls_to_wrap; without either, FSDP wraps the "
        "model's own decoder layers, its _no_split_modules"
    ),
    "fsdp_min_num_params": "Transformers 5 reads it in fsdp_config as min_num_params",
}


MOST_CHOICES_LISTED = 12  # LLaMA-Factory's 121 templates would fill a screen


def _unknown(key: str, schema: Schema) -> Problem:
    hint = f" ({RETIRED_KEYS[key]})" if key in RETIRED_KEYS else _did_you_mean(key, schema.keys)
    return Problem(key=key, what=f"not a LLaMA-Factory key{hint}", severity="error")


def _wrong_type_or_choice(key: str, value: Any, spec: KeySpec) -> Problem | None:
    typed = [accepted for accepted in spec.accepts if _has_type(value, accepted.type)]
    if any(accepted.choices is None or _as_type(value, accepted.type) in accepted.choices for accepted in typed):
        return None
    if typed:
        choices = [choice for accepted in typed for choice in accepted.choices]
        wanted = "one of " + ", ".join(map(_yaml, choices[:MOST_CHOICES_LISTED]))
        if len(choices) > MOST_CHOICES_LISTED:
            wanted = f"one of {len(choices)} names ({wanted.removeprefix('one of ')}, ...)"
        hint = _did_you_mean(value, [str(choice) for choice in choices]) if isinstance(value, str) else ""
    else:
        wanted = " or ".join(
            "one of " + ", ".join(map(_yaml, a.choices)) if a.choices else _IN_WORDS[a.type]
            for a in sorted(spec.accepts, key=lambda accepted: accepted.type == "null")  # "null" said last
        )
        hint = ""
    return Problem(key=key, what=f"must be {wanted}, got {_shown(value)}{hint}", severity="error")


def _out_of_range(key: str, value: Any, values: Mapping[str, Any], schema: Schema) -> Problem | None:
    number = _number(value)
    if number is None:
        return None
    if key == "max_steps" and number <= 0 and number != NO_STEP_LIMIT:
        epochs = values.get("num_train_epochs", schema.keys["num_train_epochs"].default)
        return Problem(
            key=key,
            what=f"{_yaml(value)} sets no step limit: Transformers trains num_train_epochs ({_yaml(epochs)}) instead",
            severity="warning",
        )
    low, high = RANGES.get(key, (None, None))
    if (low is not None and not number >= low) or (high is not None and not number <= high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        return Problem(key=key, what=f"must be {bounds}, got {_yaml(value)}", severity="error")
    return None


def _has_type(value: Any, kind: str) -> bool:
    if kind == "any":
        return True
    if kind == "null":
        return value is None
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return _number(value) is not None
    if kind == "str":
        return isinstance(value, (str, datetime.date))  # OmegaConf leaves dates as text
    return isinstance(value, {"list": list, "dict": dict}[kind])


def _as_type(value: Any, kind: str) -> Any:
    return _number(value) if kind == "float" else value


def _number(value: Any) -> float | int | None:
    """`value` as LLaMA-Factory will hold it, if that is a number: ints and floats, and OmegaConf's extra floats."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _OMEGACONF_ONLY_FLOAT.fullmatch(value):
        return float(value.replace("_", ""))
    return None


def _did_you_mean(word: str, candidates) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _shown(value: Any) -> str:
    if value == "":
        return "an empty value"
    return repr(value) if isinstance(value, str) else _yaml(value)


def _yaml(value: Any) -> str:
    """A value as a user would write it in YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and math.isnan(value):
        return ".nan"
    return str(value)


def _tuple(choices: list | None) -> tuple | None:
    return tuple(choices) if choices is not None else None
