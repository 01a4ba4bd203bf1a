"""The multi-node path for real on CPU: two launchers on localhost, ranks from the environment Kubernetes
gives, one gloo group training the tiny demo model together."""

import pytest
from llamafactory_fp8.demo import build_demo_model

from .conftest import ROOT, start_two_nodes


@pytest.mark.slow
def test_two_nodes_train_as_one_group(tmp_path):
    model = build_demo_model(tmp_path / "model", ROOT / "data")
    nodes = start_two_nodes(tmp_path / "out", model, tmp_path, "max_steps=10")
    logs = ["".join(node.communicate(timeout=300)) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    for rank, log in enumerate(logs):
        assert f"Process rank: {rank}, world size: 2" in log
    assert (tmp_path / "out" / "trainer_log.jsonl").read_text().count('"loss"') >= 4
    for rank in (0, 1):
        assert f"machine_rank: {rank}" in (tmp_path / "out" / f"accelerate_config.node{rank}.yaml").read_text()
