"""The multi-node path for real on CPU: two launchers on localhost, ranks from the environment Kubernetes
gives, one gloo group training the tiny demo model together."""

import socket
import subprocess
import sys

import pytest

from llamafactory_fp8.demo import build_demo_model

from .conftest import ROOT, cli_env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_train_as_one_group(tmp_path):
    model = build_demo_model(tmp_path / "model", ROOT / "data")
    port = str(free_port())
    nodes = []
    for rank in (0, 1):
        env = cli_env("no-gpu", NNODES="2", JOB_COMPLETION_INDEX=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                      LLAMAFACTORY_FP8_STATE_DIR=str(tmp_path / f"state{rank}"))  # each pod has its own /tmp
        nodes.append(subprocess.Popen(
            [sys.executable, "-m", "llamafactory_fp8", "train", "configs/examples/demo.yaml", "--allow-cpu",
             f"output_dir={tmp_path / 'out'}", f"model_name_or_path={model}", "max_steps=10"],  # shared, as on a PVC
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))  # fmt: skip
    logs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    for rank, log in enumerate(logs):
        assert f"Process rank: {rank}, world size: 2" in log
    assert (tmp_path / "out" / "trainer_log.jsonl").read_text().count('"loss"') >= 4
    for rank in (0, 1):
        assert f"machine_rank: {rank}" in (tmp_path / "out" / f"accelerate_config.node{rank}.yaml").read_text()
