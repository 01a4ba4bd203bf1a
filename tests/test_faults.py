"""Faults, for real on CPU with the tiny demo model: SIGTERM mid-run (what `docker stop` and Kubernetes send), a
second signal, the same command run again, a stop that reaches only one of two nodes, a trainer killed outright, a
full disk, a node lost or frozen, and a damaged checkpoint."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from llamafactory_fp8.demo import build_demo_model
from llamafactory_fp8.errors import DISK_FULL_EXIT_CODE, NODE_LOST_EXIT_CODE, STOPPED_EXIT_CODE
from llamafactory_fp8.resume import checkpoints

from .conftest import ROOT, cli_env, run_state, start_demo_training, start_two_nodes

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
    stopped_at = json.loads((run_state(state_dir, output_dir) / "stop.answer.json").read_text())["step"]
    assert 0 < stopped_at < STEPS
    assert (
        f"stopped on request after step {stopped_at}, checkpoint saved in {output_dir}/checkpoint-{stopped_at}"
        in stderr
    )
    assert not (output_dir / "model.safetensors").exists()  # no final model from a half-trained run

    code, stdout, stderr = finish(start(output_dir, tiny_model, state_dir))
    assert code == 0, stderr[-3000:]
    assert (
        f"resume      from {output_dir}/checkpoint-{stopped_at}: the last run in this output_dir was stopped on request"
        in stdout
    )
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
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert last_line(stderr).startswith("llamafactory-fp8: stopped at once by a second SIGTERM, without saving")
    assert not (run_state(state_dir, output_dir) / "stop.answer.json").exists()

    rerun_state = tmp_path / "state-rerun"
    rerun = start(output_dir, tiny_model, rerun_state)
    while not (
        run_state(rerun_state, output_dir) / "run.json"
    ).exists():  # the trainer has started: the launcher now takes signals
        assert rerun.poll() is None, rerun.communicate()
        time.sleep(0.02)
    rerun.send_signal(signal.SIGTERM)  # stopped again, before its first step: nothing to save, nothing lost
    code, stdout, stderr = finish(rerun)
    assert (
        f"resume      from {output_dir}/checkpoint-20: the last run in this output_dir failed (exit code 143)" in stdout
    )
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
    answers = [
        json.loads((run_state(tmp_path / f"state{rank}", output_dir, f".node{rank}") / "stop.answer.json").read_text())
        for rank in (0, 1)
    ]
    assert answers[0] == answers[1]
    assert (output_dir / f"checkpoint-{answers[0]['step']}").is_dir()


@pytest.mark.slow
def test_a_failing_trainer_exits_1_with_its_own_error_and_no_launcher_traceback(tmp_path, tiny_model):
    (tmp_path / "not-tokenized").mkdir()  # LLaMA-Factory reads a folder with something in it as tokenized data
    (tmp_path / "not-tokenized" / "notes.txt").write_text("not a dataset")
    tokenized = f"tokenized_path={tmp_path / 'not-tokenized'}"
    code, _, stderr = finish(start(tmp_path / "out", tiny_model, tmp_path / "state", tokenized))
    assert code == 1
    *_, trainer_error, summary = stderr.strip().splitlines()
    assert "is neither a `Dataset` directory nor a `DatasetDict` directory" in trainer_error
    assert summary == "llamafactory-fp8: training failed; the trainer's own error is above (exit 1)"
    assert "CalledProcessError" not in stderr
    assert json.loads((tmp_path / "out" / "llamafactory_fp8_run.json").read_text()) == {
        "status": "failed",
        "exit_code": 1,
    }


def wait_for_checkpoint(output_dir: Path, launcher: subprocess.Popen, step: int = 20) -> None:
    while not (output_dir / f"checkpoint-{step}" / "trainer_state.json").exists():  # demo.yaml saves every 20 steps
        assert launcher.poll() is None, launcher.communicate()
        time.sleep(0.02)


def trainer_group(state_dir: Path, output_dir: Path, node_suffix: str = "") -> int:
    return json.loads((run_state(state_dir, output_dir, node_suffix) / "run.json").read_text())["trainer_pid"]


def last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_a_trainer_killed_outright_is_named_with_its_signal_and_the_rerun_resumes(tmp_path, tiny_model):
    """What the out-of-memory killer does: SIGKILL to the training process, which leaves no error of its own."""
    output_dir, state_dir = tmp_path / "out", tmp_path / "state"
    launcher = start(output_dir, tiny_model, state_dir)
    wait_for_checkpoint(output_dir, launcher)
    os.kill(json.loads((run_state(state_dir, output_dir) / "ranks" / "rank0.json").read_text())["pid"], signal.SIGKILL)
    code, _, stderr = finish(launcher)
    assert code == 128 + signal.SIGKILL, stderr[-3000:]
    assert re.fullmatch(
        r"llamafactory-fp8: the trainer \(rank 0\) was killed by SIGKILL at step \d+, with no error of its own; the "
        r"out-of-memory killer sends SIGKILL: see the kernel log \(dmesg\)\. Run the same command again to resume "
        r"from the last complete checkpoint \(exit 137\)",
        last_line(stderr),
    )
    code, stdout, stderr = finish(start(output_dir, tiny_model, tmp_path / "state-rerun"))
    assert code == 0, stderr[-3000:]
    assert re.search(
        rf"resume      from {output_dir}/checkpoint-\d+: the last run in this output_dir failed \(exit code 137\)",
        stdout,
    )


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of 3 MiB: room for one of the demo's checkpoints (about 1.8 MB) and not two."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"a small disk needs mounting a tmpfs, which failed here: {mounted.stderr.strip()}")
    yield folder
    subprocess.run(["umount", "--lazy", str(folder)], check=False)


@pytest.mark.slow
def test_a_full_disk_during_a_save_fails_in_one_line_and_the_rerun_resumes_once_space_is_freed(
    tmp_path, tiny_model, small_disk
):
    output_dir = small_disk / "out"
    code, _, stderr = finish(start(output_dir, tiny_model, tmp_path / "state"))
    assert code == DISK_FULL_EXIT_CODE, stderr[-3000:]
    assert re.fullmatch(
        rf"llamafactory-fp8: training failed: the disk under {output_dir} is full \(\d+ MiB free\) while saving "
        r"checkpoint-40; a checkpoint it cut short is passed over: free space, then run the same command again to "
        r"resume \(exit 74\)",
        last_line(stderr),
    )
    assert json.loads((output_dir / "checkpoint-20" / "trainer_state.json").read_text())["global_step"] == 20

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)  # space freed
    code, stdout, stderr = finish(start(output_dir, tiny_model, tmp_path / "state-rerun"))
    assert code == 0, stderr[-3000:]
    assert re.search(  # the outcome could not be recorded on the full disk: the record still says running
        rf"resume      from {output_dir}/checkpoint-20: the last run in this output_dir ended without a word .*; "
        "passed over checkpoint-40: cut short, no complete trainer_state.json",
        stdout,
    )
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == STEPS


def kill_node(launcher: subprocess.Popen, state_dir: Path, output_dir: Path) -> None:
    """Node 1 lost: its launcher and everything it started, at once."""
    launcher.kill()
    os.killpg(trainer_group(state_dir, output_dir, ".node1"), signal.SIGKILL)
    launcher.wait()


@pytest.mark.slow
def test_a_node_lost_mid_run_fails_the_other_in_one_line_naming_it_and_both_resume(tmp_path, tiny_model):
    output_dir = tmp_path / "out"
    nodes = start_two_nodes(output_dir, tiny_model, tmp_path, f"max_steps={STEPS}")
    wait_for_checkpoint(output_dir, nodes[0])
    kill_node(nodes[1], tmp_path / "state1", output_dir)
    lost_at = time.monotonic()
    code, _, stderr = finish(nodes[0])
    assert code == NODE_LOST_EXIT_CODE and time.monotonic() - lost_at < 60, stderr[-3000:]
    assert re.fullmatch(
        r"llamafactory-fp8: training failed at step \d+: node 1 was lost \(.+\); run every node's command again to "
        r"resume \(exit 69\)",
        last_line(stderr),
    )

    reruns = [finish(node) for node in start_two_nodes(output_dir, tiny_model, tmp_path, f"max_steps={STEPS}")]
    assert [code for code, _, _ in reruns] == [0, 0], reruns[0][2][-2000:] + reruns[1][2][-2000:]
    assert re.search(
        rf"resume      from {output_dir}/checkpoint-\d+: the last run in this output_dir failed \(exit code 69\)",
        reruns[0][1],
    )
    assert "resume      from" in reruns[1][1] and "ended without a word (killed, or its node lost)" in reruns[1][1]


@pytest.mark.slow
def test_a_node_that_stops_answering_makes_the_other_unhealthy_then_fail_within_ddp_timeout(tmp_path, tiny_model):
    """A node frozen rather than gone keeps its connections open: the other waits in a collective until
    ddp_timeout (20 s here; Transformers' default is 1800 s), and its healthcheck says so before that."""
    output_dir = tmp_path / "out"
    nodes = start_two_nodes(output_dir, tiny_model, tmp_path, "max_steps=100000", "save_steps=100000", "ddp_timeout=20")
    try:
        wait_for_training(output_dir, nodes[0])
        os.killpg(trainer_group(tmp_path / "state1", output_dir, ".node1"), signal.SIGSTOP)
        frozen = time.monotonic()
        window = cli_env(
            "no-gpu", LLAMAFACTORY_FP8_STATE_DIR=str(tmp_path / "state0"), LLAMAFACTORY_FP8_STALL_AFTER_S="3"
        )
        while True:
            health = subprocess.run(
                [sys.executable, "-m", "llamafactory_fp8_healthcheck"], env=window, capture_output=True, text=True
            )
            if health.returncode:
                break
            assert time.monotonic() - frozen < 15, health.stdout
        assert "unhealthy: rank 0 stalled" in health.stdout and nodes[0].poll() is None, "unhealthy before it fails"
        code, _, stderr = finish(nodes[0])
        assert code == NODE_LOST_EXIT_CODE and time.monotonic() - frozen < 20 + 60, stderr[-3000:]
        assert "node 1 was lost" in last_line(stderr)
    finally:
        kill_node(nodes[1], tmp_path / "state1", output_dir)


@pytest.mark.slow
def test_a_checkpoint_with_a_truncated_file_is_passed_over_and_the_one_before_resumes(tmp_path, tiny_model):
    output_dir, state_dir = tmp_path / "out", tmp_path / "state"
    launcher = start(output_dir, tiny_model, state_dir)
    wait_for_checkpoint(output_dir, launcher, step=40)
    launcher.send_signal(signal.SIGTERM)
    assert finish(launcher)[0] == STOPPED_EXIT_CODE
    damaged = max(checkpoints(output_dir).items())[1] / "model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])  # a copy cut short
    code, stdout, stderr = finish(start(output_dir, tiny_model, tmp_path / "state-rerun"))
    assert code == 0, stderr[-3000:]
    assert re.search(
        rf"resume      from {output_dir}/checkpoint-\d+: the last run in this output_dir was stopped on request; "
        rf"passed over {damaged.parent.name}: model.safetensors truncated \([\d,]+ of [\d,]+ bytes\)",
        stdout,
    ), [line for line in stdout.splitlines() if "resume" in line]
