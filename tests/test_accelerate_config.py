"""Rendered Accelerate configs are ones Accelerate itself loads, and carry the decision."""

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from llamafactory_fp8.accelerate_config import (
    check_user_config_matches,
    load_accelerate_config,
    render_accelerate_config,
    write_accelerate_config,
)
from llamafactory_fp8.backends import BY_NAME as BACKENDS
from llamafactory_fp8.errors import AccelerateConfigInvalid
from llamafactory_fp8.fit import StrategyChoice, layout
from llamafactory_fp8.policy import Decision
from llamafactory_fp8.strategies import BY_NAME as STRATEGIES
from llamafactory_fp8.topology import Topology, read_topology

from .conftest import ROOT

CONFIGS = ROOT / "configs" / "accelerate"
FSDP_CONFIG = load_accelerate_config(CONFIGS / "fsdp2.yaml")["fsdp_config"]


def decision(
    precision="bf16", backend=None, processes=1, strategy="ddp", device="cuda", kept_from_yaml=None, machines=1
):
    source = "yaml" if kept_from_yaml else "auto"
    choice = StrategyChoice(strategy=STRATEGIES[strategy], source=source, kept_from_yaml=kept_from_yaml)
    return Decision(
        precision=precision,
        precision_source="auto",
        backend=backend and BACKENDS[backend],
        device=device,
        processes_per_node=processes,
        world_size=processes * machines,
        strategy=choice,
        layout=layout(choice.strategy, processes * machines),
        memory=None,
        memory_table=(),
        gpu_memory_gib=None,
        host_memory_gib=None,
        reasons=("test",),
        warnings=(),
    )


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_in_accelerate(path):
    assert load_config_from_file(str(path)).distributed_type


@pytest.mark.parametrize(
    "made, expected",
    [
        (decision(), {"mixed_precision": "bf16", "distributed_type": "NO", "num_processes": 1}),
        (decision("fp8", "torchao"), {"mixed_precision": "fp8", "fp8_config": {"backend": "AO"}}),
        (
            decision("fp8", "te", 8, "ddp"),
            {"mixed_precision": "fp8", "distributed_type": "MULTI_GPU", "num_processes": 8},
        ),
        (
            decision("bf16", None, 4, "fsdp2"),
            {"distributed_type": "FSDP", "num_processes": 4, "mixed_precision": "bf16"},
        ),
        (
            decision("bf16", None, 4, "fsdp2-offload"),
            {"distributed_type": "FSDP", "fsdp_config": {**FSDP_CONFIG, "fsdp_offload_params": True}},
        ),
        (decision("bf16", None, 1, "deepspeed-zero2"), {"distributed_type": "MULTI_GPU", "num_processes": 1}),
        # a strategy the training YAML names (Transformers' fsdp:) is set up by the Trainer, not Accelerate's file
        (
            decision("fp8", "torchao", 8, "fsdp2", kept_from_yaml="fsdp: full_shard auto_wrap"),
            {"distributed_type": "MULTI_GPU", "mixed_precision": "fp8"},
        ),
        (decision("fp32", device="cpu"), {"mixed_precision": "no", "use_cpu": True, "distributed_type": "NO"}),
    ],
)
def test_rendered_config_carries_the_decision(tmp_path, made, expected):
    values, sources = render_accelerate_config(made, Topology(), CONFIGS)
    assert {key: values[key] for key in expected} == expected
    path = tmp_path / "accelerate_config.yaml"
    write_accelerate_config(values, path)
    loaded = load_config_from_file(str(path))
    assert loaded.num_processes == values["num_processes"]
    assert all(source.is_file() for source in sources)


def test_te_config_keeps_the_seeds_recipe():
    te = load_accelerate_config(CONFIGS / "fp8-te.yaml")["fp8_config"]
    assert (te["backend"], te["fp8_format"], te["amax_history_len"]) == ("TE", "HYBRID", 1024)


def test_multi_node_placement_comes_from_the_environment():
    topology = read_topology(
        {"NNODES": "2", "JOB_COMPLETION_INDEX": "1", "MASTER_ADDR": "trainer-0.trainer", "MASTER_PORT": "29501"}
    )
    values, _ = render_accelerate_config(decision("bf16", None, 8, "ddp", machines=2), topology, CONFIGS)
    assert (values["num_machines"], values["machine_rank"], values["num_processes"]) == (2, 1, 16)
    assert (values["main_process_ip"], values["main_process_port"]) == ("trainer-0.trainer", 29501)


def test_a_users_config_must_agree_with_the_chosen_precision():
    check_user_config_matches(CONFIGS / "fp8-te.yaml", "fp8")
    with pytest.raises(AccelerateConfigInvalid, match="pass --fp8"):
        check_user_config_matches(CONFIGS / "fp8-te.yaml", "bf16")


def test_a_file_that_is_not_an_accelerate_config_is_refused(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("just: text\n")
    with pytest.raises(AccelerateConfigInvalid, match="not an Accelerate config"):
        load_accelerate_config(path)
    with pytest.raises(AccelerateConfigInvalid, match="not found"):
        load_accelerate_config(Path(tmp_path / "missing.yaml"))
