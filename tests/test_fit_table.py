"""Plans that fit, as a table: every recorded GPU profile x real model shapes from 0.5B to 405B x each fine-tuning
type. Auto either plans a strategy whose estimate fits, with every faster one not fitting, or refuses with one
line whose suggestions, each tried as the user would, do fit. The issue's cases are rows of their own."""

import re

import pytest
from llamafactory_fp8.errors import DoesNotFit, NoGpu
from llamafactory_fp8.strategies import STRATEGIES

from .conftest import PROFILES, model_dir, run_cli

MODELS = ("qwen2.5-0.5b", "llama-3.2-1b", "qwen2.5-3b", "qwen2.5-7b", "llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b")
TUNING = {
    "full": {"finetuning_type": "full"},
    "freeze": {"finetuning_type": "freeze"},
    "lora": {"finetuning_type": "lora", "lora_target": "all", "lora_rank": 16},
    "qlora": {"finetuning_type": "lora", "lora_target": "all", "lora_rank": 16, "quantization_bit": 4},
}
BATCH = {"per_device_train_batch_size": 2, "cutoff_len": 2048}  # the shipped example's micro-batch
# A suggestion as the refusal spells it, and the YAML keys or node count that try it.
SUGGESTIONS = {
    "finetuning_type: lora": {"finetuning_type": "lora"},
    "quantization_bit: 4 (QLoRA)": {"finetuning_type": "lora", "quantization_bit": 4},
    "disable_gradient_checkpointing: false": {"disable_gradient_checkpointing": False},
    "per_device_train_batch_size: 1": {"per_device_train_batch_size": 1},
    "cutoff_len: 1024": {"cutoff_len": 1024},
}


def keys(model, tuning):
    return {"model_name_or_path": str(model_dir(model)), **TUNING[tuning], **BATCH}


def suggestions(line: str) -> list[str]:
    """The changes after "would fit:", each "LABEL (~N GiB, STRATEGY)"."""
    return re.findall(r"(?:would fit: |, or )(.+?) \(~\d+ GiB, [^)]+\)", line)


def try_suggestion(planner, monkeypatch, profile, base, suggestion):
    """Apply one suggestion the way a user would, and plan again."""
    if suggestion.endswith(" together"):
        changes = {}
        for part in suggestion.removesuffix(" together").split(", "):
            changes.update(SUGGESTIONS[part])
        return planner(profile, {**base, **changes})
    if suggestion in SUGGESTIONS:
        return planner(profile, {**base, **SUGGESTIONS[suggestion]})
    nodes = re.fullmatch(r"(\d+) nodes of 8 such GPUs", suggestion)
    if nodes and profile == "h100-sxm-x8":
        for name, value in (("NNODES", nodes[1]), ("NODE_RANK", "0"), ("MASTER_ADDR", "node-0")):
            monkeypatch.setenv(name, value)
        return planner(profile, base)
    return None  # "8 GPUs like these" from a one-GPU profile: no profile of that machine is recorded


@pytest.mark.parametrize("tuning", TUNING)
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("profile", sorted(path.stem for path in PROFILES.glob("*.json")))
def test_auto_plans_what_fits_or_refuses_with_suggestions_that_fit(planner, monkeypatch, profile, model, tuning):
    base = keys(model, tuning)
    try:
        plan = planner(profile, base)
    except NoGpu:
        assert profile == "no-gpu"
        return
    except DoesNotFit as refusal:
        line = str(refusal)
        assert "\n" not in line and line.startswith(f"does not fit: {TUNING[tuning]['finetuning_type']} fine-tuning of")
        offered = suggestions(line)
        assert offered or line.endswith("choose a smaller model"), line
        for suggestion in offered:
            tried = try_suggestion(planner, monkeypatch, profile, base, suggestion)
            assert tried is None or tried.decision.memory.fits(tried.decision.gpu_memory_gib, 1024.0), (
                suggestion,
                line,
            )
        return
    decision = plan.decision
    if decision.memory is None:  # a model whose size is unknown is not estimated
        return
    assert decision.memory.fits(decision.gpu_memory_gib, decision.host_memory_gib)
    chosen = [s.name for s in STRATEGIES].index(decision.strategy.strategy.name)
    allowed = [s for s in STRATEGIES[:chosen] if s.carries_fp8 or decision.precision != "fp8"]
    for faster in allowed:
        estimate = next(row.estimate for row in decision.memory_table if row.strategy == faster.name)
        assert not estimate.fits(decision.gpu_memory_gib, decision.host_memory_gib), f"{faster.name} fits and is faster"
    assert any(reason.startswith("memory ~") for reason in decision.reasons), "the block says why this strategy"


# The cases a user would recognise, each with what the plan must be ("refused" for exit 20).
EXPECTED = [
    ("h100-sxm-x8", "llama-3.1-70b", "full", "refused"),  # over 1 TB of state; data parallel was planned before
    # a 10 GB slice: FSDP2's offload would load the whole model onto it first (28 GiB in fp32); ZeRO-3's, which
    # partitions as it builds, is suggested at 1 x 2048
    ("h100-mig-1g10gb", "qwen2.5-7b", "full", "refused"),
    ("h100-sxm-x8", "llama-3.1-8b", "full", "deepspeed-zero2"),  # FP8, which pays under ZeRO-2 at 2 x 2048
    ("h100-sxm-x8", "llama-3.1-8b", "lora", "ddp"),
    ("h100-sxm", "llama-3.1-8b", "lora", "ddp"),
    ("h100-sxm", "llama-3.1-8b", "full", "fsdp2-offload"),  # the state in CPU memory: slow, but it fits
    ("rtx4090", "qwen2.5-7b", "qlora", "ddp"),
    ("b200", "llama-3.1-70b", "qlora", "ddp"),
    ("h200", "llama-3.1-405b", "full", "refused"),
]


@pytest.mark.parametrize("profile, model, tuning, expected", EXPECTED)
def test_the_plan_a_user_would_expect(planner, profile, model, tuning, expected):
    try:
        chosen = planner(profile, keys(model, tuning)).decision.strategy.strategy.name
    except DoesNotFit:
        chosen = "refused"
    assert chosen == expected


def test_the_refusal_is_one_line_and_exit_20_before_anything_launches(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(
        f"model_name_or_path: {model_dir('qwen2.5-7b')}\ndo_train: true\nfinetuning_type: full\n"
        f"output_dir: {tmp_path / 'out'}\n"
    )
    small_node = {"LLAMAFACTORY_FP8_HOST_MEMORY_GIB": "64"}  # too little to offload the state to
    result = run_cli("train", str(config), profile="h100-mig-1g10gb", **small_node)
    assert result.returncode == 20
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("llamafactory-fp8: error: does not fit: full fine-tuning of 7.6B parameters needs ~")
    assert "would fit: " in line and "quantization_bit: 4 (QLoRA)" in line
    assert "accelerate.commands.launch" not in result.stdout and not (tmp_path / "out").exists()

    anyway = run_cli("train", str(config), "--no-memory-check", "--dry-run", profile="h100-mig-1g10gb", **small_node)
    assert anyway.returncode == 0, anyway.stderr
    assert "nothing fits: the smallest estimate is ~" in anyway.stderr


def test_inspect_prints_the_estimate_per_strategy(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(
        f"model_name_or_path: {model_dir('llama-3.1-8b')}\ndo_train: true\nfinetuning_type: full\n"
        f"output_dir: {tmp_path / 'out'}\nper_device_train_batch_size: 2\n"
    )
    text = run_cli("inspect", str(config), "--fp8", profile="h100-sxm-x8").stdout
    # the same key=value as `train` takes: four sequences a step need more memory than two
    overridden = run_cli("inspect", str(config), "per_device_train_batch_size=4", "--fp8", profile="h100-sxm-x8")
    assert overridden.returncode == 0, overridden.stderr
    chosen = re.compile(r"^\s+DeepSpeed ZeRO-2\s+~\s+([\d.]+)", re.M)
    assert float(chosen.search(overridden.stdout)[1]) > float(chosen.search(text)[1])
    table = text[text.index("memory per GPU by strategy") :].splitlines()
    assert [line.split("~")[0].strip() for line in table[1:]] == [s.label for s in STRATEGIES]
    (ddp,) = [line for line in table if line.strip().startswith("data parallel")]
    assert "does not fit" in ddp
    (chosen,) = [line for line in table if "<- train's choice" in line]
    assert chosen.strip().startswith("DeepSpeed ZeRO-2 ")
    (tip,) = [line for line in text.splitlines() if line.startswith("  - tip: ")]
    assert "per_device_train_batch_size: 8" in tip  # 2 x 2048 tokens per micro-batch; 8 fits under ZeRO-2
