"""Sharded strategies executed on CPU processes: FSDP2 through Accelerate needs the patch in fsdp_on_cpu.py."""

import os
import socket
import subprocess
import sys

import pytest

from .conftest import ROOT

PREPARE_ONE_LINEAR = """
import sys, torch
if sys.argv[1] == "patched":
    from llamafactory_fp8.fsdp_on_cpu import let_fsdp_run_on_cpu_processes
    let_fsdp_run_on_cpu_processes()
from accelerate import Accelerator
accelerator = Accelerator(cpu=True, mixed_precision="bf16")
model = torch.nn.Sequential(torch.nn.Linear(8, 8))
model, optimizer = accelerator.prepare(model, torch.optim.AdamW(model.parameters()))
print(accelerator.distributed_type, type(next(model.parameters())).__name__)
"""


def free_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


@pytest.mark.parametrize(
    "mode, expected",
    [("unpatched", "DistributedType.MULTI_CPU Parameter"), ("patched", "DistributedType.FSDP DTensor")],
)
def test_an_fsdp2_config_on_a_cpu_process_shards_only_with_the_patch(mode, expected):
    """What torchrun gives one CPU process of an FSDP2 launch, with CPU offload on (pinned memory needs an
    accelerator). Unpatched, Accelerate 1.11 leaves it MULTI_CPU and plain parameters: the day this line changes,
    Accelerate has fixed it and the patch can go."""
    env = {
        **os.environ,
        **dict(LOCAL_RANK="0", RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=free_port()),
        **dict(ACCELERATE_USE_FSDP="true", FSDP_VERSION="2", FSDP_OFFLOAD_PARAMS="true"),
    }
    result = subprocess.run(
        [sys.executable, "-c", PREPARE_ONE_LINEAR, mode], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == expected


@pytest.fixture
def cpu_plan(nvml_profile, tmp_path, monkeypatch):
    """The plan tests/sharded_launch.py runs: the demo's, for a strategy over CPU processes."""
    from .sharded_launch import sharded_cpu_plan

    nvml_profile("no-gpu")
    monkeypatch.setenv("LLAMAFACTORY_FP8_STATE_DIR", str(tmp_path / "state"))

    def plan(strategy: str, processes: int, precision: str = "auto", *overrides: str):
        return sharded_cpu_plan(strategy, processes, precision, (f"output_dir={tmp_path / 'out'}", *overrides))

    return plan


@pytest.mark.parametrize(
    "strategy, layout, distributed_type",
    [
        ("ddp", "multi-gpu.yaml", "MULTI_GPU"),
        ("fsdp2", "fsdp2.yaml", "FSDP"),
        ("fsdp2-offload", "fsdp2-offload.yaml", "FSDP"),
        ("deepspeed-zero2", "multi-gpu.yaml", "MULTI_GPU"),
        ("deepspeed-zero3", "multi-gpu.yaml", "MULTI_GPU"),
        ("deepspeed-zero3-offload", "multi-gpu.yaml", "MULTI_GPU"),
    ],
)
def test_several_cpu_processes_get_the_strategys_layout_without_use_cpu_so_torchrun_starts_them(
    cpu_plan, strategy, layout, distributed_type
):
    plan = cpu_plan(strategy, 2)
    values = plan.accelerate.values
    assert (values["num_processes"], values["use_cpu"], values["distributed_type"]) == (2, False, distributed_type)
    assert [source.name for source in plan.accelerate.sources] == ["bf16.yaml", layout]
    assert plan.environment["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
    deepspeed = [argument for argument in plan.command if argument.startswith("deepspeed=")]
    if strategy.startswith("deepspeed"):
        assert deepspeed == [f"deepspeed={ROOT}/configs/deepspeed/{strategy.removeprefix('deepspeed-')}.json"]
        assert "use_cpu=false" in plan.command and "bf16=false" in plan.command
    else:
        assert deepspeed == [] and "use_cpu=true" in plan.command


def test_one_cpu_process_keeps_todays_config(cpu_plan):
    from llamafactory_fp8 import paths
    from llamafactory_fp8.accelerate_config import render_accelerate_config

    plan = cpu_plan("ddp", 1, "bf16")
    today, _ = render_accelerate_config(plan.decision, plan.topology, paths.accelerate_configs_dir())
    assert dict(plan.accelerate.values) == today
    assert (today["use_cpu"], today["distributed_type"]) == (True, "NO")


@pytest.mark.parametrize(
    "strategy, processes, precision, exit_code, words",
    [
        ("fsdp2", 1, "bf16", 13, "FSDP2 shards over several processes and this CPU run has one: pass --processes 2"),
        ("deepspeed-zero3", 1, "auto", 13, "DeepSpeed ZeRO-3 shards over several processes"),
        ("deepspeed-zero2", 2, "bf16", 4, "BF16 refused: DeepSpeed ZeRO-2 runs on the CPU in FP32 only"),
    ],
)
def test_what_would_not_run_as_asked_on_the_cpu_is_refused_in_one_line(
    cpu_plan, strategy, processes, precision, exit_code, words
):
    from llamafactory_fp8.errors import LaunchError

    with pytest.raises(LaunchError) as refused:
        cpu_plan(strategy, processes, precision)
    assert refused.value.exit_code == exit_code
    assert str(refused.value).startswith(words) and "\n" not in str(refused.value)
