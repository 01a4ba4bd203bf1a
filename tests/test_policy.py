"""The precision policy and the precedence rule, as tables over recorded GPU profiles, real model shapes, YAML
keys and flags, read from the plan a user would see."""

import json
import re

import pytest
import yaml
from llamafactory_fp8 import fp8_recipe
from llamafactory_fp8.backends import BY_NAME, FP8_BACKENDS
from llamafactory_fp8.errors import BF16Unavailable, ConfigInvalid, FP8Unavailable, NoGpu, RunFinished
from llamafactory_fp8.precedence import precedence
from llamafactory_fp8.report import render_block

from .conftest import ALL_FP8_BACKENDS, BENCH_MODELS, model_dir

FULL = {"finetuning_type": "full"}
LORA = {"finetuning_type": "lora"}


def model(name):
    """The YAML key naming a model folder; a Hub id absent from the (offline) cache where no shape is known."""
    return {"model_name_or_path": str(model_dir(name)) if name else "nobody/not-in-the-cache"}


CASES = [
    # profile, model, YAML keys, flags, installed backends, expected (precision, backend, processes)
    # the 8B full fits one H200 without sharding; on one H100, an L4, a MIG slice (planned with the memory check
    # off) it needs an offload, where FP8 was never measured faster, so auto keeps BF16; on 8 H100s ZeRO-2 keeps FP8
    # from 4096 tokens per micro-batch
    ("h200", "llama-3.1-8b", FULL, {}, ALL_FP8_BACKENDS, ("fp8", "torchao", 1)),
    ("h100-sxm", "llama-3.1-8b", FULL, {}, ALL_FP8_BACKENDS, ("bf16", None, 1)),
    ("h200", "qwen2.5-7b", FULL, {}, ALL_FP8_BACKENDS, ("fp8", "torchao", 1)),
    ("b200", "llama-3.1-8b", FULL, {}, ALL_FP8_BACKENDS, ("fp8", "torchao", 1)),
    ("l4", "llama-3.1-8b", FULL, {}, ALL_FP8_BACKENDS, ("bf16", None, 1)),
    ("rtx4090", "llama-3.2-1b", FULL, {}, ALL_FP8_BACKENDS, ("bf16", None, 1)),
    ("h200", "qwen2.5-3b", FULL, {"backend": "te"}, ALL_FP8_BACKENDS, ("fp8", "te", 1)),
    ("h200", "qwen2.5-3b", FULL, {}, frozenset({"te"}), ("fp8", "te", 1)),
    ("h100-sxm", "llama-3.1-8b", LORA, {}, ALL_FP8_BACKENDS, ("fp8", "torchao", 1)),
    ("h100-sxm", "qwen2.5-7b", LORA, {}, ALL_FP8_BACKENDS, ("bf16", None, 1)),
    ("h100-sxm", "llama-3.1-8b", LORA, {"precision": "fp8"}, ALL_FP8_BACKENDS, ("fp8", "torchao", 1)),
    ("h100-sxm", None, FULL, {}, ALL_FP8_BACKENDS, ("bf16", None, 1)),
    ("h100-sxm", "llama-3.1-8b", FULL, {"precision": "bf16"}, ALL_FP8_BACKENDS, ("bf16", None, 1)),
    ("h100-sxm", "llama-3.1-8b", {**FULL, "stage": "dpo"}, {}, ALL_FP8_BACKENDS, ("bf16", None, 1)),
    ("h100-sxm", "llama-3.1-8b", FULL, {}, frozenset(), ("bf16", None, 1)),
    ("h100-sxm-x8", "llama-3.1-8b", FULL, {}, ALL_FP8_BACKENDS, ("fp8", "torchao", 8)),
    (
        "h100-sxm-x8",
        "llama-3.1-8b",
        {**FULL, "per_device_train_batch_size": 2},
        {},
        ALL_FP8_BACKENDS,
        ("fp8", "torchao", 8),
    ),
    (
        "h100-sxm-x8",
        "llama-3.1-8b",
        {**FULL, "per_device_train_batch_size": 1},
        {},
        ALL_FP8_BACKENDS,
        ("bf16", None, 8),
    ),
    (
        "h100-sxm-x8",
        "llama-3.1-8b",
        {**FULL, "per_device_train_batch_size": 2, "cutoff_len": 1024},
        {},
        ALL_FP8_BACKENDS,
        ("bf16", None, 8),
    ),
    (
        "h100-sxm-x8",
        "llama-3.1-8b",
        {**FULL, "per_device_train_batch_size": 1},
        {"precision": "fp8"},
        ALL_FP8_BACKENDS,
        ("fp8", "torchao", 8),
    ),
    ("h100-mig-1g10gb", "llama-3.1-8b", FULL, {}, ALL_FP8_BACKENDS, ("bf16", None, 1)),
    ("a100", "llama-3.1-8b", FULL, {}, ALL_FP8_BACKENDS, ("bf16", None, 1)),
    ("h100-a100-mixed", "llama-3.1-8b", FULL, {}, ALL_FP8_BACKENDS, ("bf16", None, 2)),
    ("t4", "llama-3.1-8b", FULL, {}, ALL_FP8_BACKENDS, ("fp16", None, 1)),
    ("h100-sxm", "llama-3.1-8b", {**FULL, "fp8": True}, {"precision": "bf16"}, ALL_FP8_BACKENDS, ("bf16", None, 1)),
    # the user's explicit keys beat auto; flags beat them
    ("h200", "qwen2.5-3b", {**FULL, "fp8_backend": "te"}, {}, ALL_FP8_BACKENDS, ("fp8", "te", 1)),
    (
        "h200",
        "qwen2.5-3b",
        {**FULL, "fp8_backend": "te"},
        {"backend": "torchao"},
        ALL_FP8_BACKENDS,
        ("fp8", "torchao", 1),
    ),
    ("h100-sxm", "llama-3.1-8b", {**FULL, "fp8": False}, {}, ALL_FP8_BACKENDS, ("bf16", None, 1)),
    ("h100-sxm", "llama-3.1-8b", {**FULL, "fp16": True}, {}, ALL_FP8_BACKENDS, ("fp16", None, 1)),
    ("h200", "qwen2.5-3b", {**FULL, "torch_compile": False}, {}, ALL_FP8_BACKENDS, ("fp8", "te", 1)),
    ("h100-sxm", "llama-3.1-8b", {**FULL, "torch_compile": False}, {}, frozenset({"torchao"}), ("bf16", None, 1)),
    (
        "h100-sxm",
        "llama-3.1-8b",
        {**FULL, "torch_compile": False},
        {"precision": "fp8"},
        frozenset({"torchao"}),
        ("fp8", "torchao", 1),
    ),
]


@pytest.mark.parametrize("profile, model_name, keys, flags, backends, expected", CASES)
def test_policy_table(planner, profile, model_name, keys, flags, backends, expected):
    plan = planner(profile, {**model(model_name), **keys}, backends=backends, memory_check=False, **flags)
    decision = plan.decision
    assert (decision.precision, decision.backend and decision.backend.name, decision.processes_per_node) == expected
    assert decision.reasons, "every decision says why"
    passed = {key.name: key.value for key in plan.training_keys}
    if decision.precision == "fp8":
        assert passed["fp8"] is True and passed["fp8_backend"] == decision.backend.name
        compiled = decision.backend.name == "torchao"
        assert passed["torch_compile"] is compiled
        assert passed.get("dataloader_drop_last", False) is compiled
    else:
        assert passed["fp8"] is False


def test_a_yaml_backend_is_kept_and_said(planner):
    plan = planner("h200", {**model("qwen2.5-3b"), **FULL, "fp8_backend": "te"}, memory_check=False)
    assert "backend te from the training YAML's fp8_backend" in plan.decision.reasons
    given = planner("h200", {**model("qwen2.5-3b"), **FULL}, memory_check=False, overrides=("fp8_backend=te",))
    assert "backend te from fp8_backend=te" in given.decision.reasons
    assert not plan.replaced, "nothing the user wrote was replaced"
    (tip,) = [tip for tip in plan.decision.tips if tip.startswith("Transformer Engine ran")]
    assert "--backend torchao takes the faster one" in tip and plan.decision.backend.name == "te"
    assert "\n  tip         - Transformer Engine ran" in render_block(plan), "the plan's block tells the user"
    torchao = planner("h200", {**model("qwen2.5-3b"), **FULL}, memory_check=False).decision
    assert torchao.backend.name == "torchao" and not any("Transformer Engine" in tip for tip in torchao.tips)


def test_fp8_forced_through_torchao_replaces_the_users_torch_compile_and_says_so(planner):
    plan = planner(
        "h100-sxm",
        {**model("llama-3.1-8b"), **FULL, "torch_compile": False},
        backends=frozenset({"torchao"}),
        precision="fp8",
        memory_check=False,
    )
    (replaced,) = plan.replaced
    assert (replaced.name, replaced.replaces, replaced.value, replaced.source) == (
        "torch_compile",
        (False,),
        True,
        "flag",
    )


def test_auto_keeps_bf16_where_the_user_turned_compile_off_and_only_torchao_is_there(planner):
    plan = planner(
        "h100-sxm",
        {**model("llama-3.1-8b"), **FULL, "torch_compile": False},
        backends=frozenset({"torchao"}),
        memory_check=False,
    )
    assert "BF16 because torchao FP8 needs torch_compile, which the training YAML turns off" in plan.decision.reasons


def test_precedence_is_flag_then_explicit_key_then_auto():
    assert precedence("flag", "yaml", lambda: "auto") == ("flag", "flag")
    assert precedence(None, "yaml", lambda: "auto") == ("yaml", "yaml")
    assert precedence(None, None, lambda: "auto") == ("auto", "auto")


REFUSALS = [
    ("a100", FULL, {"precision": "fp8"}, ALL_FP8_BACKENDS, FP8Unavailable, "compute capability 8.0"),
    ("h100-a100-mixed", FULL, {"precision": "fp8"}, ALL_FP8_BACKENDS, FP8Unavailable, "GPU 1 (NVIDIA A100"),
    ("a100", {**FULL, "fp8": True}, {}, ALL_FP8_BACKENDS, FP8Unavailable, "8.9"),
    ("h100-sxm", {"stage": "kto"}, {"precision": "fp8"}, ALL_FP8_BACKENDS, FP8Unavailable, "not kto"),
    ("h100-sxm", {"quantization_bit": 4}, {"precision": "fp8"}, ALL_FP8_BACKENDS, FP8Unavailable, "quantized"),
    (
        "h100-sxm",
        {"do_train": False, "do_eval": True},
        {"precision": "fp8"},
        ALL_FP8_BACKENDS,
        FP8Unavailable,
        "not train",
    ),
    ("h100-sxm", FULL, {"precision": "fp8"}, frozenset(), FP8Unavailable, "no FP8 backend"),
    (
        "h100-sxm",
        FULL,
        {"precision": "fp8", "backend": "te"},
        frozenset({"torchao"}),
        FP8Unavailable,
        "te is not installed",
    ),
    (
        "h100-sxm",
        {**FULL, "fp8": True, "fp8_backend": "msamp"},
        {},
        ALL_FP8_BACKENDS,
        FP8Unavailable,
        "msamp is not one this launcher runs",
    ),
    ("t4", FULL, {"precision": "bf16"}, ALL_FP8_BACKENDS, BF16Unavailable, "no BF16"),
    ("no-gpu", FULL, {}, ALL_FP8_BACKENDS, NoGpu, "--gpus all"),
    ("no-gpu", FULL, {"precision": "fp8", "allow_cpu": True}, ALL_FP8_BACKENDS, FP8Unavailable, "needs a GPU"),
    # LLaMA-Factory turns fp8 on for this key, so it asks for FP8 as fp8: true does
    ("a100", {**FULL, "fp8_enable_fsdp_float8_all_gather": True}, {}, ALL_FP8_BACKENDS, FP8Unavailable, "8.9"),
    (
        "h100-sxm",
        {**FULL, "fp8": False, "fp8_enable_fsdp_float8_all_gather": True},
        {},
        ALL_FP8_BACKENDS,
        ConfigInvalid,
        "contradict each other",
    ),
]


@pytest.mark.parametrize("profile, keys, flags, backends, error, words", REFUSALS)
def test_policy_refuses_rather_than_running_something_else(planner, profile, keys, flags, backends, error, words):
    with pytest.raises(error, match=words.replace("(", r"\(")):
        planner(profile, {**model("llama-3.1-8b"), **keys}, backends=backends, memory_check=False, **flags)


def test_cpu_training_needs_allow_cpu_and_says_so(planner):
    plan = planner("no-gpu", {**model("llama-3.2-1b"), **FULL}, precision="bf16", allow_cpu=True)
    passed = {key.name: key.value for key in plan.training_keys}
    assert (plan.decision.device, plan.decision.precision, passed["use_cpu"]) == ("cpu", "bf16", True)
    auto = planner("no-gpu", {**model("llama-3.2-1b"), **FULL}, allow_cpu=True).decision
    assert auto.precision == "fp32" and "CPU" in auto.reasons[0]


def test_a_run_that_only_evaluates_is_bf16_unestimated_and_may_run_again(planner, tmp_path):
    """LLaMA-Factory's evaluation configs (do_eval or do_predict, no do_train) run through `train` too: FP8 and the
    memory model are for training, and a finished evaluation in output_dir is no run to resume."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "trainer_state.json").write_text(json.dumps({"global_step": 10, "max_steps": 10}))
    keys = {**model("llama-3.1-8b"), **LORA, "do_train": False, "do_eval": True}
    decision = planner("h100-sxm", keys).decision
    assert (decision.precision, decision.memory) == ("bf16", None)
    assert decision.reasons[0].startswith("BF16 because this run does not train")
    with pytest.raises(RunFinished):  # the same folder, training: a finished run is not trained past its end
        planner("h100-sxm", {**keys, "do_train": True})


def test_small_model_stays_bf16_and_says_why(planner):
    plan = planner("h100-sxm", {**model("qwen2.5-0.5b"), **FULL})
    assert plan.decision.precision == "bf16"
    assert any("0.49B" in reason for reason in plan.decision.reasons)


def measured_speedups(backend: str = "torchao", against: str = "compiled"):
    """{(shape, layers, finetuning): mean speedup of FP8 through backend over BF16 (compiled or eager)}, over
    every committed result of the recipe the product applies to that fine-tuning type."""
    import statistics

    runs: dict[tuple, list[float]] = {}
    for path in sorted((BENCH_MODELS.parent / "results").glob("*/*.json")):
        if path.parent.name.startswith("superseded"):
            continue  # measured before the launcher dropped the short last batch
        for row in json.loads(path.read_text())["ratios"]:
            speedup = row.get(f"speedup_vs_bf16_{against}")
            applied = BY_NAME[backend].recipes.get(row["finetuning"])
            if row["backend"] == backend and speedup and row.get("recipe") == applied:
                runs.setdefault((row["shape"], row["layers"], row["finetuning"]), []).append(speedup)
    return {key: statistics.mean(values) for key, values in runs.items()}


def test_auto_never_keeps_the_slower_precision_on_a_measured_shape(planner, tmp_path):
    """FP8 where it was measured 5% faster or more (the crossover), and never BF16 where BF16 was measured more
    than 3% slower, nor FP8 where FP8 was."""
    speedups = measured_speedups()
    assert {finetuning for _, _, finetuning in speedups} == {"full", "lora"}
    for (shape, layers, finetuning), speedup in speedups.items():
        config = json.loads((BENCH_MODELS / shape / "config.json").read_text())
        folder = tmp_path / f"{shape}-{layers}"
        folder.mkdir(exist_ok=True)
        (folder / "config.json").write_text(
            json.dumps({**config, "num_hidden_layers": layers or config["num_hidden_layers"]})
        )
        keys = {"model_name_or_path": str(folder), "finetuning_type": finetuning}
        chosen = planner("h200", keys, backends=frozenset({"torchao"}), memory_check=False).decision.precision
        if speedup >= 1.05:
            assert chosen == "fp8", (shape, layers, finetuning, speedup)
        if chosen == "bf16":
            assert speedup <= 1.03, (shape, layers, finetuning, speedup)
        else:
            assert speedup >= 0.97, (shape, layers, finetuning, speedup)


def test_the_preferred_backend_is_the_fastest_measured():
    """Compared where both ran, each against BF16 eager measured in the same call as itself."""
    torchao, te = measured_speedups("torchao", "eager"), measured_speedups("te", "eager")
    assert set(torchao) & set(te)
    for key in set(torchao) & set(te):
        assert (torchao[key] >= te[key]) == (FP8_BACKENDS[0].name == "torchao"), key


@pytest.mark.parametrize(
    ("finetuning", "flags", "recipe"),
    [
        ("lora", {}, "lora-base"),  # the measured winner for LoRA
        ("full", {}, None),  # torchao's default, as measured at full depth
        ("lora", {"fp8_recipe": "default"}, None),
        ("full", {"fp8_recipe": "rowwise"}, "rowwise"),
    ],
)
def test_the_trainer_gets_the_fp8_recipe_the_plan_names_and_the_block_says_so(planner, finetuning, flags, recipe):
    plan = planner("h200", {**model("llama-3.1-8b"), "finetuning_type": finetuning}, precision="fp8", **flags)
    assert plan.environment.get(fp8_recipe.RECIPE_ENV) == recipe
    assert any(f"FP8 recipe {recipe}" in reason for reason in plan.decision.reasons) == (recipe is not None)


def test_frozen_weights_cast_whole_are_refused_where_the_weights_are_split(planner):
    keys = {**model("llama-3.1-8b"), **LORA, **FSDP}
    with pytest.raises(ConfigInvalid, match="splits the weights over the GPUs"):
        planner("h100-sxm-x8", keys, precision="fp8", fp8_recipe="lora-base-fp8-weights")
    kept = planner("h100-sxm-x8", keys, precision="fp8", fp8_recipe="lora-base-fp8-weights", strategy="ddp")
    assert kept.decision.fp8_recipe == "lora-base-fp8-weights"


RECIPES_COMPARED = ("lora-base", "lora-base-fp8-weights")


def test_frozen_weights_held_in_fp8_lower_the_estimate_by_what_they_no_longer_hold(planner):
    """lora-base-fp8-weights holds the 8B's converted base layers at 1 byte a weight: the plan's weights term falls
    by their count in bytes (6.5 GiB; tests/test_frozen_fp8_weights.py holds the numbers equal to lora-base's)."""
    keys = {**model("llama-3.1-8b"), **LORA, "lora_rank": 16, "per_device_train_batch_size": 4}
    plans = {recipe: planner("h100-sxm", keys, precision="fp8", fp8_recipe=recipe) for recipe in RECIPES_COMPARED}
    weights = {recipe: dict(plan.decision.memory.terms)["weights"] for recipe, plan in plans.items()}
    held_in_fp8 = 32 * (4096 * 4096 * 2 + 4096 * 1024 * 2 + 4096 * 14336 * 3) / 2**30  # q o, k v, gate up down
    assert weights["lora-base"] - weights["lora-base-fp8-weights"] == pytest.approx(held_in_fp8)
    loading = {recipe: plan.decision.memory.load_gib for recipe, plan in plans.items()}
    assert loading["lora-base"] == loading["lora-base-fp8-weights"] > 0, "the model loads in BF16 either way"
    assert plans["lora-base-fp8-weights"].environment[fp8_recipe.RECIPE_ENV] == "lora-base-fp8-weights"


ALL_GATHER = {"fp8_enable_fsdp_float8_all_gather": True}
FSDP = {"fsdp": "full_shard auto_wrap"}


@pytest.mark.parametrize(
    ("keys", "flags", "recipe"),
    [
        ({**ALL_GATHER, **FSDP}, {}, "fsdp-float8-all-gather"),  # the key alone asks for FP8, as in LLaMA-Factory
        ({**ALL_GATHER, **FSDP, "fp8": True}, {}, "fsdp-float8-all-gather"),
        ({**ALL_GATHER, **FSDP}, {"fp8_recipe": "default"}, None),  # the flag wins over the key
    ],
)
def test_llamafactorys_float8_all_gather_key_reaches_the_trainer_as_its_recipe(planner, keys, flags, recipe):
    """LLaMA-Factory builds the recipe for fp8_enable_fsdp_float8_all_gather and never hands it to Accelerate; the
    launcher names it for the trainer, which does."""
    plan = planner("h100-sxm-x8", {**model("llama-3.1-8b"), **FULL, **keys}, **flags)
    assert (plan.decision.precision, plan.decision.precision_source) == ("fp8", "yaml")
    assert plan.environment.get(fp8_recipe.RECIPE_ENV) == recipe
    said = "fp8: true" if "fp8" in keys else "fp8_enable_fsdp_float8_all_gather: true"
    assert f"the training YAML sets {said}" in plan.decision.reasons


def test_bf16_turns_llamafactorys_float8_all_gather_off_with_fp8(planner):
    """LLaMA-Factory's parser turns fp8 on for fp8_enable_fsdp_float8_all_gather: a BF16 run passes both off."""
    plan = planner("h100-sxm-x8", {**model("llama-3.1-8b"), **FULL, **ALL_GATHER, **FSDP}, precision="bf16")
    passed = {key.name: key for key in plan.training_keys}
    assert plan.decision.precision == "bf16"
    assert (passed["fp8"].argument, passed["fp8_enable_fsdp_float8_all_gather"].argument) == ("false", "false")
    assert passed["fp8_enable_fsdp_float8_all_gather"] in plan.replaced
    assert fp8_recipe.RECIPE_ENV not in plan.environment


def test_float8_all_gather_where_it_cannot_act_is_warned(planner):
    """Without FSDP2 the recipe has no all-gather to act on; Transformer Engine has no such recipe."""
    keys = {**model("llama-3.1-8b"), **LORA, **ALL_GATHER}
    alone = planner("h200", keys)
    assert alone.decision.strategy.strategy.name == "ddp"
    assert any("acts on FSDP2's all-gathers, and this run has none" in warning for warning in alone.decision.warnings)
    te = planner("h200", {**keys, "fp8_backend": "te"})
    assert te.decision.warnings == ("fp8_enable_fsdp_float8_all_gather: true is torchao's; FP8 through te ignores it",)
    assert fp8_recipe.RECIPE_ENV not in te.environment


def test_no_recipe_reaches_a_bf16_or_transformer_engine_run(planner):
    keys = {**model("llama-3.1-8b"), "finetuning_type": "lora"}
    assert fp8_recipe.RECIPE_ENV not in planner("h200", keys, precision="bf16").environment
    assert fp8_recipe.RECIPE_ENV not in planner("h200", keys, precision="fp8", backend="te").environment


ADVISED_KEY = re.compile(r"(\w+): (\w+)")
ONE_SEQUENCE_FULL = {
    "finetuning_type": "full",
    "per_device_train_batch_size": 1,
    "disable_gradient_checkpointing": True,
}
TWO_SEQUENCES_LORA = {
    "finetuning_type": "lora",
    "lora_target": "all",
    "per_device_train_batch_size": 2,
    "disable_gradient_checkpointing": True,
}


@pytest.mark.parametrize(
    ("profile", "keys"),
    [
        ("h200", ONE_SEQUENCE_FULL),  # measured: 1.08x at 1 x 2048, 1.34x at 8 x 2048 with checkpointing
        ("h200", {**ONE_SEQUENCE_FULL, "gradient_accumulation_steps": 8}),
        ("h200", TWO_SEQUENCES_LORA),  # measured: 1.085x at 2 x 2048, 1.225x at 8 x 2048
        ("h100-sxm", TWO_SEQUENCES_LORA),
    ],
)
def test_fp8_with_few_tokens_per_micro_batch_is_told_the_larger_batch_that_fits(planner, profile, keys):
    """The block says which keys give more tokens per micro-batch; a user who sets them gets a plan that fits, with
    the optimizer's batch kept where gradient accumulation allows, and no further tip."""
    yaml_keys = {**model("llama-3.1-8b"), "cutoff_len": 2048, **keys}
    plan = planner(profile, yaml_keys, precision="fp8")
    (tip,) = plan.decision.tips
    assert tip in render_block(plan)
    advised = {key: yaml.safe_load(value) for key, value in ADVISED_KEY.findall(tip)}
    assert advised["per_device_train_batch_size"] > keys["per_device_train_batch_size"]
    assert (
        "disable_gradient_checkpointing" not in advised or keys["finetuning_type"] == "full"
    )  # measured faster there only

    followed = planner(profile, {**yaml_keys, **advised}, precision="fp8")  # a plan that does not fit raises DoesNotFit
    assert followed.decision.strategy.strategy.name == plan.decision.strategy.strategy.name
    assert followed.decision.tips == ()
    if keys.get("gradient_accumulation_steps", 1) > 1:
        before = keys["per_device_train_batch_size"] * keys["gradient_accumulation_steps"]
        assert followed.training.micro_batch_size * followed.training.gradient_accumulation_steps == before


def test_no_tip_for_bf16_nor_where_the_micro_batch_is_already_large(planner):
    yaml_keys = {**model("llama-3.1-8b"), "cutoff_len": 2048, **ONE_SEQUENCE_FULL}
    assert planner("h200", yaml_keys, precision="bf16").decision.tips == ()
    eight = {**yaml_keys, "per_device_train_batch_size": 8, "disable_gradient_checkpointing": False}
    assert planner("h200", eight, precision="fp8").decision.tips == ()


# Full fine-tuning as a YAML that compiles BF16 and turns checkpointing off, at one sequence of 2048 a step: where
# FP8's longer start was measured to pay back after 6,260 micro-batches on the 8B (backends.py's torchao record),
# and so at least as many on the 3B, which fits one H200 in either precision without sharding
COMPILED_NO_CKPT = {
    **FULL,
    **model("qwen2.5-3b"),
    "torch_compile": True,
    "disable_gradient_checkpointing": True,
    "per_device_train_batch_size": 1,
    "cutoff_len": 2048,
}


@pytest.mark.parametrize(
    "length, expected",
    [
        ({"max_steps": 100, "gradient_accumulation_steps": 8}, "bf16"),  # 800 micro-batches
        ({"max_steps": 1000, "gradient_accumulation_steps": 8}, "fp8"),  # 8,000
        # LLaMA-Factory's example keys, one epoch: max_samples 1000 of two datasets, 8 micro-batches a step
        ({"num_train_epochs": 1, "max_samples": 1000, "dataset": "identity,alpaca_en_demo"}, "bf16"),
        ({"num_train_epochs": 3, "max_samples": 1000, "dataset": "identity,alpaca_en_demo"}, "fp8"),  # 6,000
        ({"num_train_epochs": 3}, "fp8"),  # no max_samples: the length is unknown, FP8 as before
    ],
)
def test_auto_keeps_bf16_for_a_run_too_short_to_pay_back_fp8s_longer_start(planner, length, expected):
    keys = {**COMPILED_NO_CKPT, "gradient_accumulation_steps": 8, **length}
    decision = planner("h200", keys).decision
    assert decision.precision == expected, decision.reasons
    short = [reason for reason in decision.reasons if "pay back only after" in reason]
    assert bool(short) == (expected == "bf16")
    weighed = [reason for reason in decision.reasons if "measured to pay back after" in reason]
    known_length = "max_steps" in length or "max_samples" in length
    assert bool(weighed) == (expected == "fp8" and known_length)  # FP8 kept: the block says why its start pays
    if short and length.get("max_samples"):
        # 2,000 examples, one a micro-batch: 250 optimizer steps of 8, 2,000 micro-batches; of the two points that
        # apply to the 3B (the 8B's 6,260 and Qwen2.5-7B's 3,142), the one that favours FP8
        assert "at most 2,000 micro-batches per GPU (1 epoch over at most 2,000 examples" in short[0]
        assert "250 optimizer steps" in short[0]
        assert "after 3,142 micro-batches of 2048 tokens against BF16 compiled" in short[0]


def test_the_payback_rule_applies_only_where_it_was_measured(planner):
    short = {"max_steps": 10}
    # LLaMA-Factory's default (checkpointing on, BF16 eager) was not measured: FP8 as before, and the block says
    # the run's length was not weighed, and why
    default = planner("h200", {**FULL, **model("llama-3.1-8b"), **short}).decision
    assert default.precision == "fp8"
    (unweighed,) = [reason for reason in default.reasons if "not weighed" in reason]
    assert "at most 10 micro-batches per GPU" in unweighed and "with checkpointing on against BF16 eager" in unweighed
    # a model larger than the one measured pays back sooner than it: not applied
    larger = {**COMPILED_NO_CKPT, **model("llama-3.1-70b"), **short}
    assert "pay back" not in " ".join(planner("h100-sxm-x8", larger, memory_check=False).decision.reasons)
    # the measured size itself: applied, unless BF16 needs a slower strategy (here CPU offload, where FP8 fits one
    # H200 whole)
    eight = {**COMPILED_NO_CKPT, **model("llama-3.1-8b"), **short, "gradient_accumulation_steps": 8}
    measured = planner("h200", eight).decision
    assert (measured.precision, measured.strategy.strategy.name) == ("fp8", "ddp")
    (kept,) = [reason for reason in measured.reasons if "pay back" in reason]
    assert kept.startswith("FP8 kept though") and kept.endswith(
        "BF16 would need FSDP2 with CPU offload, slower than data parallel"
    )


@pytest.mark.parametrize(
    "profile, length, expected",
    [
        ("h100-sxm", {"max_steps": 50}, "bf16"),  # 50 micro-batches: FP8 was measured ahead only after 167
        ("h100-sxm", {"max_steps": 50, "gradient_accumulation_steps": 8}, "fp8"),  # 400
        ("h200", {"max_steps": 150}, "bf16"),  # the point stands for any GPU that runs FP8
        # LLaMA-Factory's LoRA example: 3 epochs over at most 1,000 examples of each of two datasets, 8 a step
        ("h100-sxm", {"num_train_epochs": 3, "max_samples": 1000, "dataset": "identity,alpaca_en_demo"}, "fp8"),
    ],
)
def test_a_lora_run_at_llamafactorys_defaults_too_short_to_pay_back_fp8_keeps_bf16(planner, profile, length, expected):
    """LLaMA-Factory's own setting (checkpointing on, no torch_compile, one sequence a step) for the 8B's LoRA: a run
    that ends before FP8's faster steps win back its compile is planned in BF16, and the block says so."""
    keys = {**LORA, **model("llama-3.1-8b"), "per_device_train_batch_size": 1, "cutoff_len": 2048, **length}
    decision = planner(profile, keys).decision
    assert decision.precision == expected, decision.reasons
    weighed = [reason for reason in decision.reasons if "pay back" in reason]
    assert len(weighed) == 1 and "after 167 micro-batches of 2048 tokens against BF16 eager" in weighed[0]
    assert ("pay back only after" in weighed[0]) == (expected == "bf16")


@pytest.mark.parametrize(
    "keys, length, expected, point",
    [
        # the 8B's LoRA with checkpointing, torch_compile on: at one sequence FP8's steps were the slower, so BF16
        # whatever the length, known or not; at two, FP8 after 146 micro-batches
        ({**LORA, **model("llama-3.1-8b"), "torch_compile": True}, {}, "bf16", "would not catch up at any run length"),
        (
            {**LORA, **model("llama-3.1-8b"), "torch_compile": True},
            {"max_steps": 100_000},
            "bf16",
            "would not catch up at any run length",
        ),
        (
            {**LORA, **model("llama-3.1-8b"), "torch_compile": True, "per_device_train_batch_size": 2},
            {"max_steps": 100},
            "bf16",
            "after 146 micro-batches of 4096 tokens against BF16 compiled",
        ),
        (
            {**LORA, **model("llama-3.1-8b"), "torch_compile": True, "per_device_train_batch_size": 2},
            {"max_steps": 200},
            "fp8",
            "after 146 micro-batches of 4096 tokens against BF16 compiled",
        ),
        # and at LLaMA-Factory's defaults (BF16 eager), two sequences: after 95
        (
            {**LORA, **model("llama-3.1-8b"), "per_device_train_batch_size": 2},
            {"max_steps": 60},
            "bf16",
            "after 95 micro-batches of 4096 tokens against BF16 eager",
        ),
        # the 3B's full fine-tuning with checkpointing, at LLaMA-Factory's defaults (BF16 eager): after 998, and
        # after 296 at two sequences
        (
            {**FULL, **model("qwen2.5-3b"), "per_device_train_batch_size": 2},
            {"max_steps": 300},
            "fp8",
            "after 296 micro-batches of 4096 tokens against BF16 eager",
        ),
        ({**FULL, **model("qwen2.5-3b")}, {"max_steps": 500}, "bf16", "after 998 micro-batches of 2048 tokens"),
        ({**FULL, **model("qwen2.5-3b")}, {"max_steps": 2000}, "fp8", "after 998 micro-batches of 2048 tokens"),
        # and compiled: never at one sequence, a smaller model too (it gains less a step); at two, after 3,136
        ({**FULL, **model("qwen2.5-3b"), "torch_compile": True}, {}, "bf16", "would not catch up at any run length"),
        ({**FULL, **model("llama-3.2-1b"), "torch_compile": True}, {}, "bf16", "would not catch up at any run length"),
        (
            {**FULL, **model("qwen2.5-3b"), "torch_compile": True, "per_device_train_batch_size": 2},
            {"max_steps": 1000},
            "bf16",
            "after 3,136 micro-batches of 4096 tokens",
        ),
        # the 8B is larger than the 3B measured: no point applies, FP8 as before
        ({**FULL, **model("llama-3.1-8b"), "torch_compile": True}, {}, "fp8", None),
    ],
)
def test_at_llamafactorys_micro_batches_auto_takes_fp8_only_where_its_steps_were_faster_and_pay_back(
    planner, keys, length, expected, point
):
    """Checkpointing on (LLaMA-Factory's default), one or two 2048-token sequences per step: the sweep on one H100
    (bench/results/sweep-h100) had FP8's steps slower than compiled BF16's at one sequence."""
    keys = {"per_device_train_batch_size": 1, "cutoff_len": 2048, **keys, **length}
    decision = planner("h200", keys).decision  # the points stand for any GPU that runs FP8; the 8B fits one H200
    assert decision.precision == expected, decision.reasons
    weighed = " ".join(reason for reason in decision.reasons if "pay back" in reason or "catch up" in reason)
    assert (point in weighed) if point else not weighed
    if expected == "bf16":
        assert weighed.startswith("BF16 because")


def test_fp8_asked_where_its_steps_were_measured_slower_is_kept_with_the_reason(planner):
    keys = {**LORA, **model("llama-3.1-8b"), "torch_compile": True, "per_device_train_batch_size": 1}
    decision = planner("h100-sxm", {**keys, "cutoff_len": 2048}, precision="fp8").decision
    assert decision.precision == "fp8"
    (warning,) = [w for w in decision.warnings if "would not catch up at any run length" in w]
    assert "at most 1 x 2048" in warning and warning.endswith("; FP8 kept, as asked")


@pytest.mark.parametrize(
    "keys, told",
    [
        ({**LORA, **model("llama-3.1-8b")}, True),  # LLaMA-Factory's defaults: FP8 beats eager, compiled BF16 both
        ({**FULL, **model("qwen2.5-3b")}, True),
        ({**LORA, **model("llama-3.1-8b"), "per_device_train_batch_size": 2}, False),  # FP8 ahead at two sequences
        ({**FULL, **model("llama-3.1-8b")}, False),  # the 8B's full fine-tuning was not measured at one sequence
    ],
)
def test_fp8_where_compiled_bf16_ran_faster_tells_how_to_run_it(planner, keys, told):
    """A YAML without torch_compile at one sequence per step with checkpointing: auto's FP8 beats the eager BF16 the
    YAML asks for, and the block tells how to run the faster compiled BF16; said, not applied."""
    decision = planner("h200", {"per_device_train_batch_size": 1, "cutoff_len": 2048, **keys}).decision
    assert decision.precision == "fp8", decision.reasons
    tips = [tip for tip in decision.tips if "torch_compile: true" in tip]
    assert len(tips) == told
    if told:
        assert "at most 1 x 2048" in tips[0] and "`--bf16` with `torch_compile: true` would run faster" in tips[0]
        keys = {"per_device_train_batch_size": 1, "cutoff_len": 2048, **keys, "torch_compile": True}
        taken = planner("h200", keys, precision="bf16").decision
        assert taken.precision == "bf16" and not any("torch_compile" in tip for tip in taken.tips)


def test_a_short_run_whose_memory_is_not_estimated_still_plans(planner):
    """GaLore's optimizer is outside the memory model: the BF16 fit that the short run asks for has no estimate."""
    decision = planner("h200", {**COMPILED_NO_CKPT, "max_steps": 10, "use_galore": True}).decision
    assert decision.precision == "bf16" and any("pay back" in reason for reason in decision.reasons)


def test_fp8_asked_for_a_short_run_is_kept_with_the_measured_reason(planner):
    decision = planner("h200", {**COMPILED_NO_CKPT, "max_steps": 100}, precision="fp8").decision
    assert decision.precision == "fp8"
    (warning,) = [w for w in decision.warnings if "pay back" in w]
    assert warning.endswith("; FP8 kept, as asked") and "at most 100 micro-batches per GPU (max_steps 100" in warning
