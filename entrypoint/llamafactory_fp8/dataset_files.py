"""The datasets a run names, checked before anything loads against the dataset_info.json it will read (LLaMA-Factory's
demo datasets merged with the user's, lf_data.py): each name known, each local file present, readable, not empty,
and, for JSON, parsable, with the columns LLaMA-Factory's converter reads for its formatting; a Hub dataset not
asked for offline. LLaMA-Factory finds each of these only in each rank, as a traceback, once the launch, its imports
and the tokenizer are done and the data is being read and preprocessed (which on a large dataset takes minutes)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import DatasetUnusable

DATASET_KEYS = ("dataset", "eval_dataset")
HUB_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url")
JSON_CHECKED_BYTES = 64 * 2**20  # a larger JSON file is only checked to exist and hold something


def named_datasets(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key, name) for each dataset the run names, as LLaMA-Factory splits them: "a,b" or a list."""
    named = []
    for key in DATASET_KEYS:
        value = values.get(key)
        names = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else []
        named += [(key, str(name).strip()) for name in names if str(name).strip()]
    return named


def check_datasets(values: Mapping[str, Any], info: Mapping[str, Mapping], environ: Mapping[str, str]) -> None:
    for key, name in named_datasets(values):
        entry = info.get(name)
        if entry is None:
            raise DatasetUnusable(
                f"{key}: {name} is not in dataset_info.json (neither yours nor LLaMA-Factory's demo datasets: "
                f"{', '.join(sorted(info)[:6])}, ...)"
            )
        hub = next((entry[hub_key] for hub_key in HUB_KEYS if entry.get(hub_key)), None)
        if hub is not None:
            if environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on") and "file_name" not in entry:
                raise DatasetUnusable(f"{key}: {name} is a Hub dataset ({hub}) and HF_HUB_OFFLINE is set")
            continue
        if "file_name" in entry:
            problem = _file_problem(Path(entry["file_name"]), entry)
            if problem:
                raise DatasetUnusable(f"{key}: {name}'s file {entry['file_name']} {problem}")


def _file_problem(path: Path, entry: Mapping[str, Any]) -> str | None:
    if path.is_dir():
        files = [child for child in path.rglob("*") if child.is_file()]
        return None if any(child.stat().st_size for child in files) else "is a folder with no data in it"
    if not path.exists():
        return "does not exist"
    if not os.access(path, os.R_OK):
        return "cannot be read"
    size = path.stat().st_size
    if size == 0:
        return "is empty"
    if path.suffix in (".json", ".jsonl") and size <= JSON_CHECKED_BYTES:
        return _json_problem(path, entry)
    return None


def _json_problem(path: Path, entry: Mapping[str, Any]) -> str | None:
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            records = json.loads(text)
        else:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except UnicodeDecodeError:
        return "is not UTF-8 text"
    except json.JSONDecodeError as error:
        return f"is not valid JSON (line {error.lineno}: {error.msg})"
    if isinstance(records, list) and not records:
        return "holds no records"
    if isinstance(records, list) and all(isinstance(record, dict) for record in records):
        return _missing_column(records, entry)
    return None


# LLaMA-Factory's DatasetAttr: the column each attribute names where dataset_info.json's "columns" does not say
COLUMN_DEFAULTS = {"prompt": "instruction", "query": "input", "response": "output", "messages": "conversations"}
MEDIA_AND_EXTRAS = ("history", "system", "tools", "images", "videos", "audios")


def read_columns(entry: Mapping[str, Any]) -> dict[str, str]:
    """attribute -> the column LLaMA-Factory's converter reads as `example[column]` (so a KeyError where no
    record has it), for this entry's formatting, ranking and kto_tag."""
    formatting = entry.get("formatting", "alpaca")

    def named(attribute: str) -> str | None:  # a "columns" mapping replaces every default, as DatasetAttr.join does
        return entry["columns"].get(attribute) if "columns" in entry else COLUMN_DEFAULTS.get(attribute)

    attributes = ["prompt", "query"] if formatting == "alpaca" else ["messages"]
    if named("kto_tag"):
        attributes += ["kto_tag"] + (["response"] if formatting == "alpaca" else [])
    elif entry.get("ranking"):
        attributes += ["chosen", "rejected"]
    elif formatting == "alpaca":
        attributes += ["response"]
    # the openai converter reads system and tools with .get
    attributes += [a for a in MEDIA_AND_EXTRAS if formatting != "openai" or a not in ("system", "tools")]
    return {attribute: named(attribute) for attribute in attributes if named(attribute)}


def _missing_column(records: list[dict], entry: Mapping[str, Any]) -> str | None:
    present = set().union(*(record.keys() for record in records))
    formatting = entry.get("formatting", "alpaca")
    columns = read_columns(entry)
    for attribute, column in columns.items():
        if column in present:
            continue
        if formatting == "alpaca" and present & {"conversations", "messages"}:
            fix = 'its records are conversations: add "formatting": "sharegpt" to its entry in dataset_info.json'
        else:
            kept = {a: c for a, c in columns.items() if c in present}
            fix = (
                f"map the columns it has in its entry in dataset_info.json, "
                f'"columns": {json.dumps(kept)} (a "columns" mapping replaces every default)'
            )
        return (
            f"has no '{column}' in any record, which LLaMA-Factory reads as the {attribute} of formatting "
            f"{formatting} (its records hold: {', '.join(sorted(present))}); {fix}"
        )
    return None
