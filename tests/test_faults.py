"""Faults, for real on CPU with the tiny demo model: SIGTERM mid-run (what `docker stop` and Kubernetes send), a
second signal, the same command run again, and a stop that reaches only one of two nodes."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from llamafactory_fp8.demo import build_demo_model
from llamafactory_fp8.errors import STOPPED_EXIT_CODE

from .conftest import ROOT, start_demo_training, start_two_nodes

STEPS = 400  # long enough that a signal sent at the first log line lands well before the end


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_demo_model(tmp_path_factory.mktemp("model") / "tiny-llama", ROOT / "data")


def start(output_dir: Path, model: Path, state_dir: Path, *overrides: str) -> subprocess.Popen:
    return start_demo_training(output_dir, model, state_dir, f"max_steps={STEPS}", *overrides)


def wait_for_training(output_dir: Path, launcher: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not (output_dir / "trainer_log.jsonl").exists():
        assert launcher.poll() is None, launcher.communicate()
        assert time.time() < deadline, "training never started"
        time.sleep(0.05)


def finish(launcher: subprocess.Popen) -> tuple[int, str, str]:
    stdout, stderr = launcher.communicate(timeout=300)
    return launcher.returncode, stdout, stderr


def logged_losses(output_dir: Path) -> dict[int, float]:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return {entry["step"]: entry["loss"] for entry in history if "loss" in entry}


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_the_same_command_resumes(tmp_path, tiny_model):
    reference = start(tmp_path / "reference", tiny_model, tmp_path / "state-reference")
    assert finish(reference)[0] == 0

    output_dir, state_dir = tmp_path / "out", tmp_path / "state"
    launcher = start(output_dir, tiny_model, state_dir)
    wait_for_training(output_dir, launcher)
    launcher.send_signal(signal.SIGTERM)
    code, _, stderr = finish(launcher)
    assert code == STOPPED_EXIT_CODE, stderr[-3000:]
    stopped_at = json.loads((state_dir / "stop.answer.json").read_text())["step"]
    assert 0 < stopped_at < STEPS
    assert f"stopped on request after step {stopped_at}, checkpoint saved in {output_dir}/checkpoint-{stopped_at}" in stderr
    assert not (output_dir / "model.safetensors").exists()  # no final model from a half-trained run

    code, stdout, stderr = finish(start(output_dir, tiny_model, state_dir))
    assert code == 0, stderr[-3000:]
    assert f"resume      from {output_dir}/checkpoint-{stopped_at}: the last run in this output_dir was stopped on request" in stdout
    assert f"Resuming training from checkpoint with epoch 0 and global step {stopped_at}" in stderr
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == STEPS
    resumed, uninterrupted = logged_losses(output_dir), logged_losses(tmp_path / "reference")
    assert resumed.keys() == uninterrupted.keys()
    # The logging window that the stop cut in two averages fewer steps after the resume; from there on the
    # resumed run is the uninterrupted one, step for step.
    after = [step for step in resumed if step > stopped_at + 2]
    assert len(after) > 100
    for step in after:
        assert resumed[step] == pytest.approx(uninterrupted[step], rel=1e-4), step


@pytest.mark.slow
def test_a_second_signal_stops_at_once_and_the_rerun_resumes_from_the_last_periodic_checkpoint(tmp_path, tiny_model):
    output_dir, state_dir = tmp_path / "out", tmp_path / "state"
    launcher = start(output_dir, tiny_model, state_dir)
    while not (output_dir / "checkpoint-20" / "trainer_state.json").exists():  # demo.yaml saves every 20 steps
        assert launcher.poll() is None, launcher.communicate()
        time.sleep(0.02)
    # Ctrl-C, then a kill: two signal numbers, because Python runs a handler once for repeats of one number
    # that arrive together
    launcher.send_signal(signal.SIGINT)
    launcher.send_signal(signal.SIGTERM)
    code, _, stderr = finish(launcher)
    assert code == 128 + signal.SIGTERM, stderr[-3000:]
    assert not (state_dir / "stop.answer.json").exists()

    rerun_state = tmp_path / "state-rerun"
    rerun = start(output_dir, tiny_model, rerun_state)
    while not (rerun_state / "run.json").exists():  # the trainer has started: the launcher now takes signals
        assert rerun.poll() is None, rerun.communicate()
        time.sleep(0.02)
    rerun.send_signal(signal.SIGTERM)  # stopped again, before its first step: nothing to save, nothing lost
    code, stdout, stderr = finish(rerun)
    assert f"resume      from {output_dir}/checkpoint-20: the last run in this output_dir failed (exit code 143)" in stdout
    assert code == STOPPED_EXIT_CODE, stderr[-3000:]
    assert "stopped on request before the first step, with nothing to save" in stderr


@pytest.mark.slow
def test_a_stop_that_reaches_one_node_stops_both_at_the_same_step(tmp_path, tiny_model):
    """Kubernetes evicts one pod of an Indexed Job: its rank sees the request, and the other must stop with it
    rather than wait forever in the next collective."""
    output_dir = tmp_path / "out"
    nodes = start_two_nodes(output_dir, tiny_model, tmp_path, f"max_steps={STEPS}")
    wait_for_training(output_dir, nodes[0])
    nodes[1].send_signal(signal.SIGTERM)
    results = [finish(node) for node in nodes]
    assert [code for code, _, _ in results] == [STOPPED_EXIT_CODE] * 2, results[0][2][-2000:] + results[1][2][-2000:]
    answers = [json.loads((tmp_path / f"state{rank}" / "stop.answer.json").read_text()) for rank in (0, 1)]
    assert answers[0] == answers[1]
    assert (output_dir / f"checkpoint-{answers[0]['step']}").is_dir()



@pytest.mark.slow
def test_a_failing_trainer_exits_1_with_its_own_error_and_no_launcher_traceback(tmp_path, tiny_model):
    code, _, stderr = finish(start(tmp_path / "out", tiny_model, tmp_path / "state", "dataset=no_such_dataset"))
    assert code == 1
    *_, trainer_error, summary = stderr.strip().splitlines()
    assert "Undefined dataset no_such_dataset" in trainer_error
    assert summary.startswith("llamafactory-fp8: training failed (exit 1); the trainer's error is above.")
    assert "CalledProcessError" not in stderr
    assert json.loads((tmp_path / "out" / "llamafactory_fp8_run.json").read_text()) == {"status": "failed", "exit_code": 1}
