"""Which checkpoint the same command continues from, given what the last run in output_dir left."""

import json

import pytest
import torch
from llamafactory_fp8.errors import STOPPED_EXIT_CODE
from llamafactory_fp8.records import read_record, write_record
from llamafactory_fp8.resume import RunRecord, outcome, plan_resume, record_path
from llamafactory_fp8.topology import Topology
from safetensors.torch import save_file


def checkpoint(output_dir, step, complete=True):
    """What Transformers leaves: weights, optimizer state, and trainer_state.json last."""
    folder = output_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    save_file({"weight": torch.arange(1000, dtype=torch.float32)}, folder / "model.safetensors")
    torch.save({"state": {0: torch.ones(100)}}, folder / "optimizer.pt")
    if complete:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize(
    "record, complete, cut_short, users_checkpoint, expected_keys",
    [
        (None, [20], [], None, None),  # no run of ours here: LLaMA-Factory's own rule applies
        (RunRecord("finished", 0), [20], [], None, None),
        (RunRecord("stopped", STOPPED_EXIT_CODE), [20, 37], [], None, {"resume_from_checkpoint": "checkpoint-37"}),
        (RunRecord("failed", 143), [20], [40], None, {"resume_from_checkpoint": "checkpoint-20"}),
        (RunRecord("running"), [], [20], None, {"overwrite_output_dir": True}),
        (RunRecord("failed", 1), [], [], None, None),
        (RunRecord("stopped", STOPPED_EXIT_CODE), [20], [], "mine", None),
    ],
)
def test_plan_resume(tmp_path, record, complete, cut_short, users_checkpoint, expected_keys):
    for step in complete:
        checkpoint(tmp_path, step)
    for step in cut_short:
        checkpoint(tmp_path, step, complete=False)
    resume = plan_resume(tmp_path, record, users_checkpoint)
    if expected_keys is None:
        assert resume is None
        return
    keys = resume.training_keys
    if "resume_from_checkpoint" in keys:
        keys["resume_from_checkpoint"] = str(keys["resume_from_checkpoint"]).removeprefix(f"{tmp_path}/")
    assert keys == expected_keys


def test_a_run_left_only_cut_short_checkpoints_starts_over_and_says_why(tmp_path):
    checkpoint(tmp_path, 20, complete=False)
    resume = plan_resume(tmp_path, RunRecord("running"), None)
    assert resume.why == (
        "the last run in this output_dir ended without a word (killed, or its node lost) and left no usable "
        "checkpoint (checkpoint-20: cut short, no complete trainer_state.json): starting over"
    )


@pytest.mark.parametrize(
    "damaged, reason",
    [
        ("model.safetensors", "model.safetensors truncated (2,"),
        ("optimizer.pt", "optimizer.pt truncated or damaged (not a complete torch archive)"),
    ],
)
def test_a_checkpoint_with_a_truncated_file_is_passed_over_for_the_one_before(tmp_path, damaged, reason):
    checkpoint(tmp_path, 20)
    truncate(checkpoint(tmp_path, 40) / damaged)
    resume = plan_resume(tmp_path, RunRecord("failed", 74), None)
    assert resume.checkpoint.name == "checkpoint-20"
    assert f"; passed over checkpoint-40: {reason}" in resume.why


def test_the_record_round_trips_and_names_each_node(tmp_path):
    path = record_path(tmp_path, Topology(num_machines=2, machine_rank=1))
    assert path.name == "llamafactory_fp8_run.node1.json"
    for code, status in ((0, "finished"), (STOPPED_EXIT_CODE, "stopped"), (143, "failed")):
        write_record(outcome(code), path)
        assert read_record(RunRecord, path) == RunRecord(status, code)
    assert record_path(tmp_path, Topology()).name == "llamafactory_fp8_run.json"
