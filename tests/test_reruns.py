"""A run's output_dir as a user leaves it: a finished run is refused rather than "resumed" past its end, --restart
moves it aside and loses nothing, a live run's output_dir is refused to a second launcher, and a checkpoint of
another model or fine-tuning type is refused before anything loads. Planned through the CLI, as a user runs it."""

import json
import signal
import time

import pytest
from llamafactory_fp8.errors import STOPPED_EXIT_CODE
from llamafactory_fp8.run_lock import RunLock, lock_path

from .conftest import run_cli, start_demo_training


def finish(launcher) -> tuple[int, str, str]:
    stdout, stderr = launcher.communicate(timeout=600)
    return launcher.returncode, stdout, stderr


DEMO = "configs/examples/demo.yaml"


def dry_run(tmp_path, output_dir, *extra):
    return run_cli(
        "train", DEMO, "--allow-cpu", f"output_dir={output_dir}", f"model_name_or_path={tmp_path / 'm'}", "--dry-run",
        *extra,
    )  # fmt: skip


def one_line(result) -> str:
    (line,) = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stdout + result.stderr
    return line


def finished(output_dir, step=40, last=40):
    output_dir.mkdir(parents=True)
    (output_dir / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": last}))
    (output_dir / "checkpoint-20").mkdir()


def test_a_finished_run_is_refused_with_both_ways_out(tmp_path):
    output_dir = tmp_path / "out"
    finished(output_dir)
    result = dry_run(tmp_path, output_dir)
    assert result.returncode == 22
    line = one_line(result)
    assert "finished at step 40 of 40" in line and "new output_dir" in line and "--restart" in line


def test_an_interrupted_run_is_not_refused(tmp_path):
    output_dir = tmp_path / "out"
    finished(output_dir, step=20)
    assert dry_run(tmp_path, output_dir).returncode == 0


def test_restart_plans_to_move_the_old_run_aside_and_touches_nothing_on_a_dry_run(tmp_path):
    output_dir = tmp_path / "out"
    finished(output_dir)
    result = dry_run(tmp_path, output_dir, "--restart")
    assert result.returncode == 0, result.stderr
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("  restart")]
    assert f"moves to {output_dir}.before-" in row and "resume " not in result.stdout
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]


def test_a_live_run_holds_its_output_dir(tmp_path):
    output_dir = tmp_path / "out"
    with RunLock(lock_path(output_dir, "")):
        result = dry_run(tmp_path, output_dir)
    assert result.returncode == 23
    assert "another launcher is running in" in one_line(result)
    assert dry_run(tmp_path, output_dir).returncode == 0  # let go with the launcher


@pytest.mark.parametrize(
    "finetuning, checkpoint_files, words",
    [
        ("full", {"adapter_config.json": {"r": 8}}, "is a LoRA adapter, and this run is full fine-tuning"),
        ("lora", {"config.json": {"hidden_size": 64}}, "holds no LoRA adapter"),
        ("lora", {"adapter_config.json": {"r": 64}}, "of rank 64, and this run's lora_rank is 8"),
    ],
)
def test_a_checkpoint_of_another_kind_is_refused_before_loading(tmp_path, finetuning, checkpoint_files, words):
    output_dir = tmp_path / "out"
    folder = output_dir / "checkpoint-20"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 20}))
    for name, content in checkpoint_files.items():
        (folder / name).write_text(json.dumps(content))
    (output_dir / "llamafactory_fp8_run.json").write_text('{"status": "stopped", "exit_code": 75}')
    result = dry_run(tmp_path, output_dir, f"finetuning_type={finetuning}", "lora_rank=8")
    assert result.returncode == 24, result.stderr
    assert words in one_line(result)


# Real runs on the CPU, through accelerate launch and LLaMA-Factory


def start(tmp_path, output_dir, *overrides, **env):
    return start_demo_training(output_dir, tmp_path / "model", tmp_path / "state", "max_steps=30", *overrides, **env)


@pytest.mark.slow
def test_a_rerun_of_a_finished_run_loses_nothing_and_restart_keeps_the_old_run(tmp_path):
    output_dir = tmp_path / "out"
    code, stdout, stderr = finish(start(tmp_path, output_dir))
    assert code == 0, stderr[-3000:]
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("llamafactory-fp8: finished: 30 steps, ") and "tokens/s" in last, last
    assert last.endswith(f"model and checkpoints in {output_dir}")
    before = sorted(path.name for path in output_dir.iterdir())

    code, _, stderr = finish(start(tmp_path, output_dir, "learning_rate=1.0e-4"))
    assert code == 22 and "finished at step 30 of 30" in stderr
    assert sorted(path.name for path in output_dir.iterdir()) == before  # checkpoint-20 and all

    code, stdout, stderr = finish(start(tmp_path, output_dir, "learning_rate=1.0e-4", "--restart"))
    assert code == 0, stderr[-3000:]
    (aside,) = tmp_path.glob("out.before-*")
    assert sorted(path.name for path in aside.iterdir()) == before
    assert f"moved the earlier run in {output_dir} to {aside}" in stdout
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 30


@pytest.mark.slow
def test_runs_side_by_side_keep_apart_and_ctrl_c_reaches_only_its_own(tmp_path):
    """Two runs on one host with the default state folder: one is interrupted, the other finishes; a second
    launcher on the live one's output_dir is refused."""
    first = start_demo_training(tmp_path / "a", tmp_path / "model", None, "max_steps=400")
    while not (tmp_path / "a" / "checkpoint-20").is_dir():
        assert first.poll() is None, first.communicate()
        time.sleep(0.05)
    second = start_demo_training(tmp_path / "b", tmp_path / "model", None, "max_steps=60")
    intruder = start_demo_training(tmp_path / "a", tmp_path / "model", None, "max_steps=400")
    code, _, stderr = finish(intruder)
    assert code == 23 and "another launcher is running in" in stderr
    while not (tmp_path / "b" / "trainer_log.jsonl").exists():
        assert second.poll() is None, second.communicate()
        time.sleep(0.05)
    first.send_signal(signal.SIGINT)
    assert finish(first)[0] == STOPPED_EXIT_CODE
    code, _, stderr = finish(second)
    assert code == 0, stderr[-3000:]
    assert json.loads((tmp_path / "b" / "trainer_state.json").read_text())["global_step"] == 60
