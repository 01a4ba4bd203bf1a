"""LLaMA-Factory's demo datasets under the names its users know (alpaca_en_demo, identity, c4_demo, ...), beside the
user's own datasets.

LLaMA-Factory reads one dataset_info.json, from `dataset_dir`, and compose's ./data mount hides whatever the image
holds under /workspace/data. So the run gets a folder of its own holding one merged dataset_info.json, passed as
`dataset_dir`: LLaMA-Factory's entries (its release's `data/`, lf_files.py says where) and the user's, the user's
winning a name both have. Every local path in it is absolute, since LLaMA-Factory joins each to `dataset_dir`; and
`media_dir`, which defaults to `dataset_dir`, stays the user's folder, where their images and videos are."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DATASET_INFO = "dataset_info.json"  # LLaMA-Factory's DATA_CONFIG
LOCAL_PATH_KEYS = ("file_name", "script_url")  # what LLaMA-Factory's loader joins to dataset_dir


class DatasetInfoUnreadable(ValueError):
    """A dataset_info.json that is not JSON, not a mapping of dataset names to mappings, or (LLaMA-Factory's) absent."""


def names_a_folder(dataset_dir: str) -> bool:
    """Whether LLaMA-Factory reads `dataset_dir` as a folder: `ONLINE` and `REMOTE:<repo>` name the Hub instead."""
    return dataset_dir != "ONLINE" and not dataset_dir.startswith("REMOTE:")


def merged_dataset_info(dataset_dir: Path, lf_data_dir: Path) -> dict[str, dict[str, Any]]:
    """LLaMA-Factory's entries, then the user's (`dataset_dir` need not exist, nor hold a dataset_info.json), the
    user's replacing LLaMA-Factory's of the same name; every local path absolute."""
    lf_info = lf_data_dir / DATASET_INFO
    if not lf_info.is_file():
        raise DatasetInfoUnreadable(f"LLaMA-Factory's demo datasets are missing: no {lf_info} (run scripts/bootstrap)")
    merged = _absolute(_read(lf_info), lf_data_dir)
    users = dataset_dir / DATASET_INFO
    if users.is_file():
        merged.update(_absolute(_read(users), dataset_dir))
    return merged


def write_dataset_info(info: Mapping[str, Any], folder: Path) -> None:
    """Write a merged dataset_info.json into `folder` (the run's own, passed as `dataset_dir`). Written whole or not
    at all: nodes of one run may write the same folder at once."""
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{DATASET_INFO}.{os.getpid()}"
    partial.write_text(json.dumps(info, indent=2, ensure_ascii=False))
    partial.replace(folder / DATASET_INFO)


def _read(path: Path) -> dict[str, dict[str, Any]]:
    try:
        info = json.loads(path.read_text())
    except OSError as error:
        raise DatasetInfoUnreadable(f"{path} cannot be read: {error.strerror}") from None
    except UnicodeDecodeError:
        raise DatasetInfoUnreadable(f"{path} is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise DatasetInfoUnreadable(f"{path} is not valid JSON (line {error.lineno}: {error.msg})") from None
    if not isinstance(info, dict) or not all(isinstance(entry, dict) for entry in info.values()):
        raise DatasetInfoUnreadable(f"{path} must map each dataset name to its description")
    return info


def _absolute(info: dict[str, dict[str, Any]], base: Path) -> dict[str, dict[str, Any]]:
    return {
        name: {
            key: os.path.abspath(base / value) if key in LOCAL_PATH_KEYS and isinstance(value, str) else value
            for key, value in entry.items()
        }
        for name, entry in info.items()
    }
