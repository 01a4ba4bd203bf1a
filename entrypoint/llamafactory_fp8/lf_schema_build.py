"""Write the schema of LLaMA-Factory's training keys from its own argument dataclasses, the five that its
`get_train_args` parses: each key's accepted types, its choices and its default, as JSON that lf_schema.py reads
without importing torch, Transformers or LLaMA-Factory. Run at install time (docker/Dockerfile, scripts/bootstrap),
where importing LLaMA-Factory once is affordable.

    python -m llamafactory_fp8.lf_schema_build OUT.json
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.metadata
import json
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any

SIMPLE_TYPES = {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "dict", type(None): "null"}
CONTAINERS = {list: "list", tuple: "list", set: "list", dict: "dict"}


def accepted(annotation: Any) -> list[dict]:
    """The alternatives a value may take, each {"type": ..., "choices": [...] where listed}."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(annotation)
        alternatives = [alternative for member in members for alternative in accepted(member)]
        if any(isinstance(member, type) and issubclass(member, enum.Enum) for member in members):
            # `SchedulerType | str`: Transformers' __post_init__ turns the text into the enum, so only its values pass
            alternatives = [alternative for alternative in alternatives if alternative != {"type": "str"}]
        return _unique(alternatives)
    if origin is typing.Literal:
        return _choices_by_type(typing.get_args(annotation))
    if origin in CONTAINERS:
        return [{"type": CONTAINERS[origin]}]
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return _choices_by_type(tuple(member.value for member in annotation))
    if isinstance(annotation, type) and issubclass(annotation, os.PathLike):
        return [{"type": "str"}]
    if annotation in SIMPLE_TYPES:
        return [{"type": SIMPLE_TYPES[annotation]}]
    return [{"type": "any"}]  # a class no YAML value can build (ParallelismConfig): not checked


def _choices_by_type(values: tuple) -> list[dict]:
    kinds = {}
    for value in values:
        kinds.setdefault(SIMPLE_TYPES[type(value)], []).append(value)
    return [{"type": kind, "choices": choices} for kind, choices in kinds.items()]


def _unique(alternatives: list[dict]) -> list[dict]:
    seen = []
    for alternative in alternatives:
        if alternative not in seen:
            seen.append(alternative)
    return seen


def default_of(field: dataclasses.Field) -> tuple[bool, Any]:
    """(whether the field has a default that JSON can hold, that default)."""
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return False, None
    if isinstance(value, enum.Enum):
        value = value.value
    try:
        json.dumps(value)
    except TypeError:
        return False, None
    return True, value


def key_spec(field: dataclasses.Field, annotation: Any) -> dict:
    alternatives = accepted(annotation)
    listed = field.metadata.get("choices")  # Transformers lists some choices for argparse (log_level, ddp_backend)
    if listed is not None:
        alternatives = with_choices(alternatives, list(listed))
    spec = {"accepts": alternatives}
    has_default, default = default_of(field)
    if has_default:
        spec["default"] = default
    return spec


def registered_templates() -> list[str]:
    """The chat templates LLaMA-Factory registers: its `template` key is free text that it looks up only once the
    tokenizer has loaded."""
    from llamafactory.data.template import TEMPLATES

    return sorted(TEMPLATES)


def with_choices(alternatives: list[dict], choices: list) -> list[dict]:
    """The alternatives with `choices` as the values of each but null."""
    return [a if a["type"] == "null" else {**a, "choices": choices} for a in alternatives]


def build_schema() -> dict:
    from llamafactory.hparams import (
        DataArguments,
        FinetuningArguments,
        GeneratingArguments,
        ModelArguments,
        TrainingArguments,
    )

    keys = {}
    for arguments in (ModelArguments, DataArguments, TrainingArguments, FinetuningArguments, GeneratingArguments):
        annotations = typing.get_type_hints(arguments)
        for field in dataclasses.fields(arguments):
            if field.init:  # what HfArgumentParser accepts; a key of two dataclasses is checked by its first
                keys.setdefault(field.name, key_spec(field, annotations[field.name]))
    template = keys["template"]
    keys["template"] = {**template, "accepts": with_choices(template["accepts"], registered_templates())}
    return {
        "llamafactory": importlib.metadata.version("llamafactory"),
        "transformers": importlib.metadata.version("transformers"),
        "keys": dict(sorted(keys.items())),
    }


def main(out: Path) -> None:
    schema = build_schema()
    out.parent.mkdir(parents=True, exist_ok=True)
    written = out.with_name(f".{out.name}.partial")
    written.write_text(json.dumps(schema, indent=1) + "\n")
    written.replace(out)  # a reader never sees half a schema
    print(f"lf_schema_build: {len(schema['keys'])} keys of LLaMA-Factory {schema['llamafactory']} written to {out}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m llamafactory_fp8.lf_schema_build OUT.json")
    main(Path(sys.argv[1]))
