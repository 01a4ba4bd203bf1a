"""LLaMA-Factory's demo datasets under their own names beside a user's (lf_data.py): the merged dataset_info.json is
read by LLaMA-Factory's own parser and its paths lead to the files, from a folder that is neither the user's nor
LLaMA-Factory's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from llamafactory_fp8.lf_data import DatasetInfoUnreadable, merged_dataset_info, write_dataset_info
from llamafactory_fp8.lf_files import lf_data_dir

from .conftest import model_dir

LF_DATA = lf_data_dir()
LF_DEMOS = ("alpaca_en_demo", "identity", "dpo_en_demo", "kto_en_demo", "c4_demo", "wiki_demo")


@pytest.fixture
def users_data(tmp_path) -> Path:
    """A user's data/ with an entry of their own, one that takes LLaMA-Factory's name `identity`, and a Hub one."""
    data = tmp_path / "project" / "data"
    (data / "mine").mkdir(parents=True)
    (data / "mine" / "train.json").write_text('[{"instruction": "hi", "input": "", "output": "hello"}]')
    (data / "who.json").write_text('[{"instruction": "who are you", "input": "", "output": "me"}]')
    (data / "dataset_info.json").write_text(
        json.dumps(
            {
                "mine": {"file_name": "mine/train.json"},
                "identity": {"file_name": "who.json"},
                "on_the_hub": {"hf_hub_url": "someone/dataset"},
            }
        )
    )
    return data


def test_llamafactorys_demos_keep_their_names_and_lead_to_their_files(tmp_path):
    merged = merged_dataset_info(tmp_path / "no-such-folder", LF_DATA)
    for name in LF_DEMOS:
        assert Path(merged[name]["file_name"]).is_absolute() and Path(merged[name]["file_name"]).is_file(), name
    lf_info = json.loads((LF_DATA / "dataset_info.json").read_text())
    assert merged.keys() == lf_info.keys(), "every entry of LLaMA-Factory's, its Hub ones included"
    assert merged["alpaca_en"] == lf_info["alpaca_en"]


def test_the_users_entries_join_them_and_win_a_shared_name(users_data):
    merged = merged_dataset_info(users_data, LF_DATA)
    assert merged["mine"] == {"file_name": str(users_data / "mine" / "train.json")}
    assert merged["identity"] == {"file_name": str(users_data / "who.json")}, "the user's identity, not LF's"
    assert merged["on_the_hub"] == {"hf_hub_url": "someone/dataset"}
    assert Path(merged["alpaca_en_demo"]["file_name"]).parent == LF_DATA


@pytest.mark.parametrize(
    ("written", "said"),
    [
        ('{"mine": {"file_name": "x.json"},}', "is not valid JSON (line 1: Expecting property name"),
        ('["mine"]', "must map each dataset name to its description"),
        ('{"mine": "x.json"}', "must map each dataset name to its description"),
    ],
)
def test_a_broken_dataset_info_is_one_line_naming_it(users_data, written, said):
    (users_data / "dataset_info.json").write_text(written)
    with pytest.raises(DatasetInfoUnreadable) as refused:
        merged_dataset_info(users_data, LF_DATA)
    assert str(refused.value).startswith(f"{users_data / 'dataset_info.json'} {said}")
    assert "\n" not in str(refused.value)


def test_without_llamafactorys_data_it_says_how_to_get_it(tmp_path, users_data):
    with pytest.raises(DatasetInfoUnreadable) as refused:
        merged_dataset_info(users_data, tmp_path / "missing")
    assert str(refused.value) == (
        f"LLaMA-Factory's demo datasets are missing: no {tmp_path / 'missing' / 'dataset_info.json'} "
        "(run scripts/bootstrap)"
    )


def test_the_run_gets_a_folder_of_its_own_and_media_stays_the_users(planner, users_data):
    keys = {"model_name_or_path": str(model_dir("qwen2.5-0.5b")), "dataset_dir": str(users_data), "dataset": "mine"}
    plan = planner("h100-sxm", keys)
    final = {key.name: key for key in plan.training_keys}
    assert final["dataset_dir"].value == str(plan.dataset_dir) and plan.dataset_dir != users_data
    assert final["dataset_dir"].replaces == (str(users_data),) and final["dataset_dir"].source == "auto"
    assert final["media_dir"].value == str(users_data)
    assert plan.dataset_info == merged_dataset_info(users_data, LF_DATA)

    theirs = planner("h100-sxm", {**keys, "media_dir": str(users_data / "images")})
    assert "media_dir" not in {key.name for key in theirs.training_keys if key.source == "auto"}


@pytest.mark.parametrize("dataset_dir", ["ONLINE", "REMOTE:someone/dataset-info"])
def test_a_dataset_dir_on_the_hub_is_left_alone(planner, dataset_dir):
    keys = {"model_name_or_path": str(model_dir("qwen2.5-0.5b")), "dataset_dir": dataset_dir}
    if dataset_dir.startswith("REMOTE:"):
        return  # read through Ray, which the image lacks: tests/test_capabilities.py
    plan = planner("h100-sxm", keys)
    assert plan.dataset_info is None
    assert {key.name: key.value for key in plan.training_keys}["dataset_dir"] == dataset_dir


LOADER_PROBE = """
import json, os, sys
from llamafactory.data.parser import get_dataset_list
dataset_dir = sys.argv[1]
for attr in get_dataset_list(sys.argv[2].split(","), dataset_dir):
    path = os.path.join(dataset_dir, attr.dataset_name)  # as llamafactory.data.loader joins it
    print(json.dumps([attr.load_from, path, os.path.isfile(path)]))
"""


def test_llamafactorys_parser_finds_both_sides_files_from_the_runs_folder(tmp_path, users_data):
    run = tmp_path / "run"
    write_dataset_info(merged_dataset_info(users_data, LF_DATA), run)
    assert os.listdir(run) == ["dataset_info.json"], "nothing half-written left behind"
    probe = subprocess.run(
        [sys.executable, "-c", LOADER_PROBE, str(run), "mine,identity,alpaca_en_demo,c4_demo"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # nowhere near either data folder
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    found = [json.loads(line) for line in probe.stdout.splitlines()]
    assert found == [
        ["file", str(users_data / "mine" / "train.json"), True],
        ["file", str(users_data / "who.json"), True],
        ["file", str(LF_DATA / "alpaca_en_demo.json"), True],
        ["file", str(LF_DATA / "c4_demo.jsonl"), True],
    ]
