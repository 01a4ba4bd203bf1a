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
