"""Strategies: one the YAML already names is recognised, kept and reported; a flag replaces it and the block
says what it replaced; auto takes the fastest that fits in memory and says why."""

import json

import pytest
import yaml
from llamafactory_fp8.errors import ConfigInvalid, DoesNotFit

from .conftest import ALL_STRATEGIES, model_dir, run_cli

EIGHT_B_FULL = {
    "model_name_or_path": str(model_dir("llama-3.1-8b")),
    "do_train": True,
    "finetuning_type": "full",
    "per_device_train_batch_size": 2,
}
SEVENTY_B_FULL = {**EIGHT_B_FULL, "model_name_or_path": str(model_dir("llama-3.1-70b"))}
WITHOUT_DEEPSPEED = frozenset(name for name in ALL_STRATEGIES if "deepspeed" not in name)


@pytest.fixture
def deepspeed_json(tmp_path):
    def write(stage: int, **zero) -> str:
        path = tmp_path / f"ds_z{stage}.json"
        path.write_text(json.dumps({"bf16": {"enabled": "auto"}, "zero_optimization": {"stage": stage, **zero}}))
        return str(path)

    return write


def keys_of(plan):
    return {key.name: key for key in plan.training_keys}


def test_a_yaml_deepspeed_config_is_kept_reported_and_estimated_as_its_stage(planner, deepspeed_json):
    config = deepspeed_json(3)
    plan = planner("h100-sxm-x8", {**EIGHT_B_FULL, "deepspeed": config})
    decision = plan.decision
    assert (decision.strategy.strategy.name, decision.strategy.source) == ("deepspeed-zero3", "yaml")
    assert f"DeepSpeed ZeRO-3 from the training YAML (deepspeed: {config} (ZeRO stage 3))" in decision.reasons
    assert keys_of(plan)["deepspeed"].argument is None, "LLaMA-Factory reads it from the YAML, as the user wrote it"
    assert not plan.replaced
    assert decision.memory.strategy == "deepspeed-zero3"
    # FP8 stays on under ZeRO-3 but ran at 0.67x of BF16 (bench/results/rehearsal-8b-zero3): auto keeps BF16, and
    # FP8 asked for runs with the measured reason as a warning
    assert decision.precision == "bf16"
    assert "BF16 because FP8 was never measured faster than BF16 under DeepSpeed ZeRO-3 (bench/README.md)" in (
        decision.reasons
    )
    forced = planner("h100-sxm-x8", {**EIGHT_B_FULL, "deepspeed": config}, precision="fp8").decision
    assert (forced.precision, forced.strategy.strategy.name) == ("fp8", "deepspeed-zero3")
    assert forced.warnings == (
        "FP8 was never measured faster than BF16 under DeepSpeed ZeRO-3 (bench/README.md); FP8 kept, as asked",
    )


def test_a_yaml_with_offload_in_its_deepspeed_config_is_estimated_as_offload(planner, deepspeed_json):
    config = deepspeed_json(3, offload_optimizer={"device": "cpu"})
    plan = planner("h100-sxm-x8", {**EIGHT_B_FULL, "deepspeed": config})
    assert plan.decision.strategy.strategy.name == "deepspeed-zero3-offload"
    assert plan.decision.memory.host_gib > 0
    forced = planner("h100-sxm-x8", {**EIGHT_B_FULL, "deepspeed": config}, precision="fp8").decision
    assert forced.precision == "fp8"
    (warning,) = forced.warnings  # one warning, not a second that repeats it in weaker words
    assert warning.startswith("FP8 never ran under DeepSpeed ZeRO-3 with CPU offload")


def test_llamafactorys_own_fsdp_fp8_example_is_kept_as_fsdp(planner):
    """examples/extras/fp8/llama3_fp8_fsdp_sft.yaml's keys: Transformers' fsdp, FP8 through torchao. Its
    fsdp_transformer_layer_cls_to_wrap is a Transformers 4 key that 5.6 dropped: refused in one line, as LLaMA-Factory's
    own parser would after loading; without it, the example plans as written."""
    dropped = {
        **EIGHT_B_FULL,
        "fsdp": "full_shard auto_wrap",
        "fsdp_transformer_layer_cls_to_wrap": "LlamaDecoderLayer",
    }
    with pytest.raises(ConfigInvalid, match="fsdp_transformer_layer_cls_to_wrap: not a LLaMA-Factory key"):
        planner("h100-sxm-x8", dropped)
    keys = {
        **EIGHT_B_FULL,
        "fsdp": "full_shard auto_wrap",
        "fp8": True,
        "fp8_backend": "torchao",
        "fp8_enable_fsdp_float8_all_gather": True,
    }
    plan = planner("h100-sxm-x8", keys)
    decision = plan.decision
    assert (decision.precision, decision.backend.name) == ("fp8", "torchao")
    assert (decision.strategy.strategy.name, decision.strategy.kept_from_yaml) == (
        "fsdp2",
        "fsdp: full_shard auto_wrap",
    )
    assert "FSDP2 from the training YAML (fsdp: full_shard auto_wrap)" in decision.reasons
    assert [path.name for path in plan.accelerate.sources] == ["fp8-torchao.yaml", "multi-gpu.yaml"], (
        "the Trainer sets up FSDP"
    )
    assert plan.accelerate.values["num_processes"] == 8
    assert decision.memory.strategy == "fsdp2"


def test_a_flag_replaces_the_yamls_deepspeed_and_the_block_says_so(planner, deepspeed_json):
    config = deepspeed_json(2)
    plan = planner("h100-sxm-x8", {**EIGHT_B_FULL, "deepspeed": config}, strategy="deepspeed-zero3")
    (replaced,) = plan.replaced
    assert (replaced.name, replaced.replaces, replaced.source) == ("deepspeed", (config,), "flag")
    assert replaced.value.endswith("configs/deepspeed/zero3.json")
    assert f"deepspeed={replaced.value}" in plan.command


def test_fsdp2_from_the_flag_switches_the_yamls_deepspeed_off(planner, deepspeed_json):
    config = deepspeed_json(3)
    plan = planner("h100-sxm-x8", {**EIGHT_B_FULL, "deepspeed": config}, strategy="fsdp2")
    assert "deepspeed=null" in plan.command
    assert keys_of(plan)["deepspeed"].replaces == (config,)
    assert [path.name for path in plan.accelerate.sources][-1] == "fsdp2.yaml"


def test_every_key_that_differs_from_the_users_yaml_is_in_replaces_whatever_set_it(planner, tmp_path):
    (tmp_path / "out" / "checkpoint-20").mkdir(parents=True)
    (tmp_path / "out" / "checkpoint-20" / "trainer_state.json").write_text("{}")
    (tmp_path / "out" / "llamafactory_fp8_run.json").write_text('{"status": "stopped", "exit_code": 75}')
    keys = {**EIGHT_B_FULL, "fp8_backend": "te", "learning_rate": 1e-4, "overwrite_output_dir": True, "bf16": False}
    plan = planner("h100-sxm-x8", keys, overrides=("learning_rate=1.0e-5",))
    replaced = {key.name: (key.replaces[0], key.value, key.source) for key in plan.replaced}
    assert replaced == {
        "learning_rate": (1e-4, 1e-5, "override"),  # the user's own key=value
        "bf16": (False, True, "auto"),  # the precision auto chose (FP8 through TE keeps bf16 for the rest)
    }
    assert keys_of(plan)["resume_from_checkpoint"].source == "resume"


def test_a_forced_strategy_that_does_not_fit_warns_and_runs(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(json.dumps({**SEVENTY_B_FULL, "output_dir": str(tmp_path / "out")}))
    result = run_cli("train", str(config), "--strategy", "ddp", "--dry-run", profile="h100-sxm-x8")
    assert result.returncode == 0, result.stderr
    (warning,) = result.stderr.strip().splitlines()
    assert (
        warning.startswith("llamafactory-fp8: warning: data parallel needs ~") and "it may run out of memory" in warning
    )
    assert "\n  warning" in result.stdout


@pytest.mark.parametrize(
    "precision, strategies, expected",
    [
        ("bf16", ALL_STRATEGIES, "deepspeed-zero2"),  # data parallel needs ~160 GiB; ZeRO-2 keeps weights whole
        ("bf16", WITHOUT_DEEPSPEED, "fsdp2"),
        ("fp8", ALL_STRATEGIES, "deepspeed-zero2"),  # FP8 stays on under ZeRO-2, rehearsed faster than FSDP2
        ("fp8", WITHOUT_DEEPSPEED, "fsdp2"),
    ],
)
def test_auto_takes_the_fastest_strategy_that_fits_and_says_what_the_faster_one_needed(
    planner, precision, strategies, expected
):
    plan = planner("h100-sxm-x8", EIGHT_B_FULL, precision=precision, strategies=strategies)
    decision = plan.decision
    assert decision.strategy.strategy.name == expected
    (why,) = [reason for reason in decision.reasons if reason.startswith("memory ~")]
    assert why.endswith(f"over 8); data parallel would need ~{decision.memory_table[0].estimate.total_gib:.0f}")
    assert decision.memory.fits(decision.gpu_memory_gib)


def test_several_nodes_share_the_state_over_all_their_gpus(planner, monkeypatch):
    one = planner("h100-sxm-x8", SEVENTY_B_FULL, strategy="fsdp2").decision.memory
    monkeypatch.setenv("NNODES", "4")
    monkeypatch.setenv("NODE_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "node-0")
    four = planner("h100-sxm-x8", SEVENTY_B_FULL, strategy="fsdp2").decision
    assert (four.strategy.strategy.name, four.memory.world_size) == ("fsdp2", 32)
    assert four.memory.total_gib < one.total_gib


def test_fsdp2_is_planned_only_where_each_gpu_holds_the_whole_model_while_it_loads(planner, tmp_path):
    """With fsdp_cpu_ram_efficient_loading off, LLaMA-Factory maps the whole model onto each process's GPU and
    upcasts it there before FSDP2 shards it: the 8B's ~31 GiB fit an H100 and need no CPU memory (rank 0 rehearsed
    held ~2 GiB), a 100-layer Llama's ~86 GiB do not, though its shard would."""
    keys = {**EIGHT_B_FULL, "per_device_train_batch_size": 1}
    small_node = planner("h100-sxm-x8", keys, host_gib=128.0, strategies=WITHOUT_DEEPSPEED).decision
    assert (small_node.strategy.strategy.name, small_node.memory.host_gib) == ("fsdp2", 0.0)
    assert 25 < small_node.memory.load_gib < 35
    deep = tmp_path / "llama-100-layers"
    deep.mkdir()
    config = json.loads((model_dir("llama-3.1-8b") / "config.json").read_text())
    (deep / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 100}))
    with pytest.raises(DoesNotFit, match=r"each process loads the whole model onto its GPU first: ~8\d GiB"):
        planner("h100-sxm-x8", {**keys, "model_name_or_path": str(deep)}, strategies=WITHOUT_DEEPSPEED)
    partitioned = planner("h100-sxm-x8", {**keys, "model_name_or_path": str(deep)}, precision="bf16").decision
    assert partitioned.strategy.strategy.name == "deepspeed-zero3", "ZeRO-3 partitions the model as it builds"


def test_a_rehearsal_needs_only_rank_0s_share_of_the_nodes_memory_here(planner):
    """Rehearsing 8 GPUs on one: the job's node is taken to have 8 times this machine's memory, as cloud machines
    scale, so the plan is the one such a node gets as long as rank 0's own share fits here."""
    keys = {"model_name_or_path": str(model_dir("llama-3.1-8b")), "finetuning_type": "full"}
    for strategies, expected in ((ALL_STRATEGIES, "deepspeed-zero2"), (WITHOUT_DEEPSPEED, "fsdp2")):
        job = planner("h100-sxm-x8", keys, host_gib=8 * 34.0, strategies=strategies).decision
        rehearsed = planner("h100-sxm", keys, host_gib=34.0, strategies=strategies, rehearsal=True, processes=8)
        assert (rehearsed.decision.precision, rehearsed.decision.strategy.strategy.name) == (
            job.precision,
            job.strategy.strategy.name,
        )
        assert (job.precision, job.strategy.strategy.name) == ("fp8", expected)
    offloaded = r"with CPU offload ~\d+ GiB per GPU and ~10\d\d GiB of CPU memory \(1024 on a node of 8 such GPUs"
    with pytest.raises(DoesNotFit, match=offloaded):  # the 70B's plan over 8: rank 0 alone needs more than 128 GiB
        planner("h100-sxm", SEVENTY_B_FULL, host_gib=128.0, rehearsal=True, processes=8)


def test_a_rehearsal_takes_the_node_memory_setting_as_the_jobs_node(tmp_path):
    """LLAMAFACTORY_FP8_HOST_MEMORY_GIB names the node the plan is for: in a rehearsal, the job's node."""
    args = ("rehearse", str(tmp_path / "train.yaml"), "--processes", "8", "--dry-run")
    (tmp_path / "train.yaml").write_text(yaml.safe_dump({**SEVENTY_B_FULL, "output_dir": str(tmp_path / "out")}))
    small = run_cli(*args, profile="h100-sxm", LLAMAFACTORY_FP8_HOST_MEMORY_GIB="128")
    assert small.returncode == DoesNotFit.exit_code
    assert "GiB of CPU memory (128 for the job's node (LLAMAFACTORY_FP8_HOST_MEMORY_GIB))" in small.stderr
    roomy = run_cli(*args, profile="h100-sxm", LLAMAFACTORY_FP8_HOST_MEMORY_GIB="2048")
    assert roomy.returncode == 0 and "DeepSpeed ZeRO-3 with CPU offload over 8" in roomy.stdout, roomy.stderr
