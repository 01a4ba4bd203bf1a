"""The healthcheck: each phase's window, judged from the ranks' own progress records, against real tiny training
runs whose phases are made genuinely slow (a huge logging_steps, a slow save, a slow start), frozen runs, written
records for the windows' arithmetic, and sick GPUs."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from llamafactory_fp8.progress import RankProgress
from llamafactory_fp8.records import write_record
from llamafactory_fp8.run_info import RunState, write_state

from .conftest import ROOT, cli_env, run_state

DEMO = "configs/examples/demo.yaml"


def healthcheck(state_dir, profile="no-gpu", **env):
    result = subprocess.run(
        [sys.executable, "-m", "llamafactory_fp8_healthcheck"],
        env=cli_env(profile, LLAMAFACTORY_FP8_STATE_DIR=str(state_dir), **env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout + result.stderr
    return result.returncode, lines[0]


@pytest.fixture
def sleeper():
    process = subprocess.Popen(["sleep", "300"])
    yield process
    process.kill()
    process.wait()


def run_with_ranks(state_dir: Path, pid: int, *records: RankProgress, started_ago: float = 60) -> None:
    folder = run_state(state_dir, state_dir / "out")
    write_state(RunState(pid, str(state_dir / "out"), "cpu", time.time() - started_ago), folder / "run.json")
    for record in records:
        write_record(record, folder / "ranks" / f"rank{record.rank}.json")


def rank(number=0, phase="training", ago=1.0, phase_ago=None, **fields) -> RankProgress:
    now = time.time()
    defaults = dict(step=812, first_step=0, max_steps=5000, step_seconds=10.0)
    return RankProgress(number, os.getpid(), phase, now - (phase_ago or ago), now - ago, **{**defaults, **fields})


# The windows' arithmetic, on written records


def test_training_is_judged_against_a_few_steps_never_less_than_the_floor(tmp_path, sleeper):
    run_with_ranks(tmp_path, sleeper.pid, rank(ago=700, step_seconds=200))  # a 70B: 200 s a step
    code, line = healthcheck(tmp_path, LLAMAFACTORY_FP8_STALL_AFTER_S="600")
    assert code == 0 and line == "healthy: step 812 of 5000, last step 700 s ago (window 1000 s; a step takes ~200.0 s)"
    run_with_ranks(tmp_path, sleeper.pid, rank(ago=1100, step_seconds=200))
    code, line = healthcheck(tmp_path, LLAMAFACTORY_FP8_STALL_AFTER_S="600")
    assert code == 1 and line.startswith(
        "unhealthy: rank 0 stalled: step 812 of 5000, last step 1100 s ago (window 1000 s"
    )
    run_with_ranks(tmp_path, sleeper.pid, rank(ago=700, step_seconds=2))
    assert healthcheck(tmp_path, LLAMAFACTORY_FP8_STALL_AFTER_S="600")[0] == 1, "fast steps: the floor applies"


def test_a_save_has_its_own_limit_from_its_start(tmp_path, sleeper):
    run_with_ranks(tmp_path, sleeper.pid, rank(phase="saving", ago=95, detail="checkpoint-800"))
    assert healthcheck(tmp_path, LLAMAFACTORY_FP8_STALL_AFTER_S="60") == (
        0,
        "healthy: step 812, saving checkpoint-800 for 95 s (limit 1800 s)",
    )
    code, line = healthcheck(tmp_path, LLAMAFACTORY_FP8_SAVE_LIMIT_S="60")
    assert code == 1 and line == "unhealthy: rank 0 stalled: step 812, saving checkpoint-800 for 95 s (limit 60 s)"


def test_start_up_counts_a_growing_cache_as_moving(tmp_path, sleeper):
    cache = tmp_path / "hub"
    cache.mkdir()
    old = time.time() - 1000
    os.utime(cache, (old, old))
    run_with_ranks(tmp_path, sleeper.pid, rank(phase="loading", ago=1000, watch=str(cache)), started_ago=1000)
    code, line = healthcheck(tmp_path, LLAMAFACTORY_FP8_STARTUP_GRACE_S="600")
    assert code == 1 and "loading the model, last moved 1000 s ago (window 600 s)" in line
    (cache / "blob.incomplete").write_bytes(b"the download goes on")
    code, line = healthcheck(tmp_path, LLAMAFACTORY_FP8_STARTUP_GRACE_S="600")
    assert code == 0 and line.startswith("healthy: loading the model, last moved 0 s ago")


def test_the_first_step_has_the_start_up_window(tmp_path, sleeper):
    """It compiles: minutes, with nothing to measure a step by yet."""
    run_with_ranks(tmp_path, sleeper.pid, rank(ago=900, step=40, first_step=40, step_seconds=None))
    code, line = healthcheck(tmp_path, LLAMAFACTORY_FP8_STALL_AFTER_S="60")
    assert code == 0 and line == "healthy: the first step, last moved 900 s ago (window 1800 s)"


def test_one_rank_standing_still_makes_the_node_unhealthy(tmp_path, sleeper):
    run_with_ranks(tmp_path, sleeper.pid, rank(0, ago=2), rank(1, ago=120, step=811), rank(2, ago=3))
    assert healthcheck(tmp_path, LLAMAFACTORY_FP8_STALL_AFTER_S="60") == (
        1,
        "unhealthy: rank 1 stalled: step 811 of 5000, last step 120 s ago (window 60 s; a step takes ~10.0 s)",
    )
    run_with_ranks(tmp_path, sleeper.pid, rank(0, ago=2), rank(1, ago=3), rank(2, ago=1))
    code, line = healthcheck(tmp_path, LLAMAFACTORY_FP8_STALL_AFTER_S="60")
    assert code == 0 and line.endswith("(the slowest of 3 ranks)")


def test_before_any_rank_reports_the_start_up_window_runs_from_the_launch(tmp_path, sleeper):
    run_with_ranks(tmp_path, sleeper.pid, started_ago=5)
    assert healthcheck(tmp_path)[0] == 0
    run_with_ranks(tmp_path, sleeper.pid, started_ago=100)
    code, line = healthcheck(tmp_path, LLAMAFACTORY_FP8_STARTUP_GRACE_S="30")
    assert code == 1 and "no rank has reported after 100 s" in line


def test_a_dead_trainer_or_a_failed_run_is_unhealthy(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    folder = run_state(tmp_path, tmp_path / "out")
    write_state(RunState(gone.pid, str(tmp_path), "cpu", time.time()), folder / "run.json")
    assert healthcheck(tmp_path) == (1, f"unhealthy: trainer process {gone.pid} is gone")
    write_state(RunState(gone.pid, str(tmp_path), "cpu", time.time(), exit_code=143), folder / "run.json")
    assert healthcheck(tmp_path) == (1, "unhealthy: trainer exited with code 143")


def test_gpus_must_be_visible_and_healthy_for_a_gpu_run(tmp_path, sleeper):
    write_state(
        RunState(sleeper.pid, str(tmp_path), "cuda", time.time()), run_state(tmp_path, tmp_path / "out") / "run.json"
    )
    assert healthcheck(tmp_path, profile="h100-sxm")[0] == 0
    code, line = healthcheck(tmp_path, profile="h100-ecc-errors")
    assert code == 1 and "uncorrected ECC errors" in line
    code, line = healthcheck(tmp_path, profile="no-gpu")
    assert code == 1 and "GPUs gone" in line


def test_no_run_recorded_is_unhealthy(tmp_path):
    code, line = healthcheck(tmp_path / "nothing-here")
    assert code == 1 and "no training run recorded" in line


# Real runs, with a phase made genuinely slow


def start_training(tmp_path, *overrides, **env) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llamafactory_fp8",
            "train",
            DEMO,
            "--allow-cpu",
            f"output_dir={tmp_path / 'out'}",
            f"model_name_or_path={tmp_path / 'model'}",
            *overrides,
        ],
        cwd=ROOT,
        env=cli_env("no-gpu", LLAMAFACTORY_FP8_STATE_DIR=str(tmp_path / "state"), **env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def watch_health(tmp_path, trainer, until, timeout=300, **env) -> list[tuple[int, str]]:
    """Ask the healthcheck again and again while the run goes on, until a line satisfies `until`; from when the
    launcher has recorded its run (before that, Docker's start period and Kubernetes' startup probe wait)."""
    seen, deadline = [], time.time() + timeout
    while (
        not (run_state(tmp_path / "state", tmp_path / "out") / "run.json").exists()
        and trainer.poll() is None
        and time.time() < deadline
    ):
        time.sleep(0.1)
    while time.time() < deadline and trainer.poll() is None:
        seen.append(healthcheck(tmp_path / "state", **env))
        if until(seen[-1][1]):
            return seen
    raise AssertionError(f"never saw it; the run {'ended' if trainer.poll() is not None else 'went on'}: {seen[-5:]}")


@pytest.mark.slow
def test_a_run_that_logs_rarely_is_healthy_every_step_and_finishes_healthy(tmp_path):
    """logging_steps far above the run: trainer_log.jsonl never moves, the ranks' own records do."""
    trainer = start_training(tmp_path, "max_steps=300", "logging_steps=100000", "save_steps=100000")
    window = dict(LLAMAFACTORY_FP8_STALL_AFTER_S="2")
    try:
        started = time.time()
        seen = watch_health(tmp_path, trainer, lambda line: time.time() - started > 8 and " of 300," in line, **window)
        assert all(code == 0 for code, _ in seen), seen
        assert not (tmp_path / "out" / "trainer_log.jsonl").exists()
    finally:
        assert trainer.wait(timeout=300) == 0, trainer.stderr.read()[-3000:]
    assert healthcheck(tmp_path / "state") == (0, "healthy: training finished")


@pytest.mark.slow
def test_a_slow_save_is_healthy_within_its_limit_and_unhealthy_past_it(tmp_path):
    """A model large enough that a checkpoint takes seconds to write, far past a 1 s training window."""
    from llamafactory_fp8.demo import build_demo_model
    from transformers import LlamaConfig, LlamaForCausalLM

    build_demo_model(tmp_path / "model", ROOT / "data")
    config = LlamaConfig.from_pretrained(tmp_path / "model")
    config.update(
        dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            num_key_value_heads=12,
        )
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path / "model")  # ~90M parameters, with the demo's tokenizer
    trainer = start_training(tmp_path, "max_steps=4", "save_steps=2", "per_device_train_batch_size=1", "cutoff_len=16")
    try:
        saving = watch_health(
            tmp_path, trainer, lambda line: "saving checkpoint-2 for" in line, LLAMAFACTORY_FP8_STALL_AFTER_S="1"
        )
        assert saving[-1][0] == 0 and "(limit 1800 s)" in saving[-1][1]
        code, line = healthcheck(tmp_path / "state", LLAMAFACTORY_FP8_SAVE_LIMIT_S="0.01")
        assert code == 1 and "saving checkpoint-2 for" in line and "(limit 0 s)" in line
    finally:
        assert trainer.wait(timeout=600) == 0, trainer.stderr.read()[-3000:]


@pytest.mark.slow
def test_a_slow_start_is_healthy_while_the_dataset_is_tokenized(tmp_path):
    """A generated dataset large enough that tokenizing it outlasts the start-up window: the datasets cache
    growing keeps it healthy."""
    data = tmp_path / "data"
    shutil.copytree(ROOT / "data", data)
    records = json.loads((data / "demo" / "sft.json").read_text())
    (data / "demo" / "sft.json").write_text(json.dumps(records * (300_000 // len(records) + 1)))
    trainer = start_training(
        tmp_path,
        f"dataset_dir={data}",
        "max_steps=2",
        "preprocessing_num_workers=1",
        HF_HOME=str(tmp_path / "hf"),
        HF_DATASETS_CACHE=str(tmp_path / "hf" / "datasets"),
    )
    window_s = 8
    try:
        # Under the default window until tokenizing begins: on a loaded host, imports alone can outlast 8 s.
        watch_health(tmp_path, trainer, lambda line: "preprocessing" in line)
        began = time.time()
        seen = watch_health(
            tmp_path,
            trainer,
            lambda line: time.time() - began > window_s + 4,
            LLAMAFACTORY_FP8_STARTUP_GRACE_S=str(window_s),
        )
        assert all(code == 0 for code, _ in seen), [line for code, line in seen if code]
        assert "preprocessing" in seen[-1][1], "tokenizing ended within the window: the test proves nothing"
    finally:
        assert trainer.wait(timeout=900) == 0, trainer.stderr.read()[-3000:]


@pytest.mark.slow
def test_a_frozen_trainer_is_unhealthy_within_its_window(tmp_path):
    trainer = start_training(tmp_path, "max_steps=100000", "save_steps=100000")
    window = dict(LLAMAFACTORY_FP8_STALL_AFTER_S="3")
    try:
        watch_health(tmp_path, trainer, lambda line: "last step" in line, **window)
        pid = json.loads((run_state(tmp_path / "state", tmp_path / "out") / "run.json").read_text())["trainer_pid"]
        os.killpg(pid, signal.SIGSTOP)
        frozen = time.time()
        while healthcheck(tmp_path / "state", **window)[0] == 0:
            assert time.time() - frozen < 30, "still healthy long after the window"
        assert time.time() - frozen >= 2
        assert "stalled" in healthcheck(tmp_path / "state", **window)[1]
    finally:
        os.killpg(pid, signal.SIGKILL)
        trainer.kill()
        trainer.wait()


def test_healthcheck_is_installed_as_a_command():
    assert shutil.which("llamafactory-fp8-healthcheck", path=os.path.dirname(sys.executable))


def test_the_healthcheck_reads_the_launcher_only_through_run_info_and_the_contract():
    """The launcher's internals can change without the healthcheck noticing: it imports run_info, the settings'
    contract and the errors they raise, nothing else."""
    import ast

    imported = []
    for path in (ROOT / "healthcheck").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                imported += [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                imported += [alias.name for alias in node.names]
    from_launcher = [name for name in imported if name.split(".")[0] == "llamafactory_fp8"]
    public = ("llamafactory_fp8.run_info", "llamafactory_fp8.contract", "llamafactory_fp8.errors")
    assert from_launcher and all(name.startswith(public) for name in from_launcher), from_launcher
