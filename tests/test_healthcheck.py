"""The healthcheck against a real tiny training run (live and finished), a stalled one, and sick GPUs."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from llamafactory_fp8.run_info import RunState, write_state

from .conftest import ROOT, cli_env


def healthcheck(state_dir, profile="no-gpu", **env):
    result = subprocess.run(
        [sys.executable, "-m", "llamafactory_fp8_healthcheck"],
        env=cli_env(profile, LLAMAFACTORY_FP8_STATE_DIR=str(state_dir), **env),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout + result.stderr
    return result.returncode, lines[0]


@pytest.fixture
def sleeper():
    process = subprocess.Popen(["sleep", "300"])
    yield process
    process.kill()
    process.wait()


@pytest.mark.slow
def test_a_real_run_is_healthy_while_training_and_after_finishing(tmp_path):
    state_dir, output_dir = tmp_path / "state", tmp_path / "out"
    env = cli_env("no-gpu", LLAMAFACTORY_FP8_STATE_DIR=str(state_dir))
    trainer = subprocess.Popen(
        [sys.executable, "-m", "llamafactory_fp8", "train", "configs/examples/demo.yaml", "--allow-cpu",
         f"output_dir={output_dir}", f"model_name_or_path={tmp_path / 'model'}", "max_steps=400", "save_steps=1000"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.time() + 240
        while not (output_dir / "trainer_log.jsonl").exists() and trainer.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert trainer.poll() is None, "the run ended before the healthcheck could look at it"
        code, line = healthcheck(state_dir)
        assert (code, line.split(":")[0]) == (0, "healthy") and "making progress" in line
    finally:
        assert trainer.wait(timeout=300) == 0
    assert healthcheck(state_dir) == (0, "healthy: training finished")


def test_a_stalled_trainer_is_unhealthy(tmp_path, sleeper):
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    (output_dir / "trainer_log.jsonl").write_text(json.dumps({"current_steps": 2, "loss": 5.0}) + "\n")
    stale = time.time() - 120
    os.utime(output_dir / "trainer_log.jsonl", (stale, stale))
    write_state(RunState(sleeper.pid, str(output_dir), "cpu", stale - 60), tmp_path / "run.json")
    code, line = healthcheck(tmp_path, LLAMAFACTORY_FP8_STALL_AFTER_S="60")
    assert code == 1 and "has not advanced for" in line


def test_start_up_grace_then_unhealthy_without_a_first_log(tmp_path, sleeper):
    write_state(RunState(sleeper.pid, str(tmp_path / "out"), "cpu", time.time()), tmp_path / "run.json")
    assert healthcheck(tmp_path)[0] == 0
    write_state(RunState(sleeper.pid, str(tmp_path / "out"), "cpu", time.time() - 100), tmp_path / "run.json")
    code, line = healthcheck(tmp_path, LLAMAFACTORY_FP8_STARTUP_GRACE_S="30")
    assert code == 1 and "no training log after" in line


def test_a_dead_trainer_or_a_failed_run_is_unhealthy(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    write_state(RunState(gone.pid, str(tmp_path), "cpu", time.time()), tmp_path / "run.json")
    assert healthcheck(tmp_path) == (1, f"unhealthy: trainer process {gone.pid} is gone")
    write_state(RunState(gone.pid, str(tmp_path), "cpu", time.time(), exit_code=143), tmp_path / "run.json")
    assert healthcheck(tmp_path) == (1, "unhealthy: trainer exited with code 143")


def test_gpus_must_be_visible_and_healthy_for_a_gpu_run(tmp_path, sleeper):
    write_state(RunState(sleeper.pid, str(tmp_path), "cuda", time.time()), tmp_path / "run.json")
    assert healthcheck(tmp_path, profile="h100-sxm")[0] == 0
    code, line = healthcheck(tmp_path, profile="h100-ecc-errors")
    assert code == 1 and "uncorrected ECC errors" in line
    code, line = healthcheck(tmp_path, profile="no-gpu")
    assert code == 1 and "GPUs gone" in line


def test_no_run_recorded_is_unhealthy(tmp_path):
    code, line = healthcheck(tmp_path / "nothing-here")
    assert code == 1 and "no training run recorded" in line


def test_healthcheck_is_installed_as_a_command():
    assert shutil.which("llamafactory-fp8-healthcheck", path=os.path.dirname(sys.executable))


def test_the_healthcheck_reads_the_launcher_only_through_run_info():
    """The launcher's internals can change without the healthcheck noticing: it imports run_info alone."""
    import ast

    imported = []
    for path in (ROOT / "healthcheck").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                imported += [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                imported += [alias.name for alias in node.names]
    from_launcher = [name for name in imported if name.split(".")[0] == "llamafactory_fp8"]
    assert from_launcher and all(name.startswith("llamafactory_fp8.run_info") for name in from_launcher), from_launcher
