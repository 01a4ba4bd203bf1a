"""The precision policy as a table over recorded GPU profiles, real model shapes and user flags."""

import json

import pytest

from llamafactory_fp8.errors import BF16Unavailable, FP8Unavailable, NoGpu
from llamafactory_fp8.gpus import read_gpus
from llamafactory_fp8.model_facts import read_model_facts
from llamafactory_fp8.policy import FP8_BACKEND_PREFERENCE, Request, TrainingFacts, decide

from .conftest import BENCH_MODELS

BOTH = frozenset({"torchao", "te"})
FULL = TrainingFacts(finetuning_type="full")


def model(name):
    return None if name is None else read_model_facts(str(BENCH_MODELS / name))


CASES = [
    # profile, model, training, request, backends, expected (precision, backend, processes)
    ("h100-sxm", "llama-3.1-8b", FULL, Request(), BOTH, ("fp8", "torchao", 1)),
    ("h200", "qwen2.5-7b", FULL, Request(), BOTH, ("fp8", "torchao", 1)),
    ("b200", "llama-3.1-8b", FULL, Request(), BOTH, ("fp8", "torchao", 1)),
    ("l4", "llama-3.1-8b", FULL, Request(), BOTH, ("fp8", "torchao", 1)),
    ("rtx4090", "llama-3.2-1b", FULL, Request(), BOTH, ("fp8", "torchao", 1)),
    ("h100-sxm", "llama-3.1-8b", FULL, Request(backend="te"), BOTH, ("fp8", "te", 1)),
    ("h100-sxm", "llama-3.1-8b", FULL, Request(), frozenset({"te"}), ("fp8", "te", 1)),
    ("h100-sxm", "llama-3.1-8b", TrainingFacts(finetuning_type="lora"), Request(), BOTH, ("fp8", "torchao", 1)),
    ("h100-sxm", "qwen2.5-7b", TrainingFacts(finetuning_type="lora"), Request(), BOTH, ("bf16", None, 1)),
    ("h100-sxm", "llama-3.1-8b", TrainingFacts(finetuning_type="lora"), Request("fp8"), BOTH, ("fp8", "torchao", 1)),
    ("h100-sxm", None, FULL, Request(), BOTH, ("bf16", None, 1)),
    ("h100-sxm", "llama-3.1-8b", FULL, Request("bf16"), BOTH, ("bf16", None, 1)),
    ("h100-sxm", "llama-3.1-8b", TrainingFacts(stage="dpo", finetuning_type="full"), Request(), BOTH, ("bf16", None, 1)),
    ("h100-sxm", "llama-3.1-8b", FULL, Request(), frozenset(), ("bf16", None, 1)),
    ("h100-sxm-x8", "llama-3.1-8b", FULL, Request(), BOTH, ("fp8", "torchao", 8)),
    ("h100-mig-1g10gb", "llama-3.1-8b", FULL, Request(), BOTH, ("fp8", "torchao", 1)),
    ("a100", "llama-3.1-8b", FULL, Request(), BOTH, ("bf16", None, 1)),
    ("h100-a100-mixed", "llama-3.1-8b", FULL, Request(), BOTH, ("bf16", None, 2)),
    ("t4", "llama-3.1-8b", FULL, Request(), BOTH, ("fp16", None, 1)),
    ("h100-sxm", "llama-3.1-8b", TrainingFacts(finetuning_type="full", asks_for_fp8=True), Request("bf16"), BOTH, ("bf16", None, 1)),
]


@pytest.mark.parametrize("profile, model_name, training, request_, backends, expected", CASES)
def test_policy_table(nvml_profile, profile, model_name, training, request_, backends, expected):
    nvml_profile(profile)
    decision = decide(read_gpus({}), model(model_name), training, request_, backends)
    assert (decision.precision, decision.backend, decision.num_processes) == expected
    assert decision.reasons, "every decision says why"
    if decision.precision == "fp8":
        assert decision.training_keys["fp8"] is True
        assert decision.training_keys["fp8_backend"] == decision.backend
        compiled = decision.backend == "torchao"
        assert decision.training_keys["torch_compile"] is compiled
        assert decision.training_keys.get("dataloader_drop_last", False) is compiled
    else:
        assert decision.training_keys["fp8"] is False


REFUSALS = [
    ("a100", FULL, Request("fp8"), BOTH, FP8Unavailable, "compute capability 8.0"),
    ("h100-a100-mixed", FULL, Request("fp8"), BOTH, FP8Unavailable, "GPU 1 (NVIDIA A100"),
    ("a100", TrainingFacts(finetuning_type="full", asks_for_fp8=True), Request(), BOTH, FP8Unavailable, "8.9"),
    ("h100-sxm", TrainingFacts(stage="kto"), Request("fp8"), BOTH, FP8Unavailable, "not kto"),
    ("h100-sxm", TrainingFacts(quantized=True), Request("fp8"), BOTH, FP8Unavailable, "quantized"),
    ("h100-sxm", FULL, Request("fp8"), frozenset(), FP8Unavailable, "no FP8 backend"),
    ("h100-sxm", FULL, Request("fp8", backend="te"), frozenset({"torchao"}), FP8Unavailable, "te is not installed"),
    ("t4", FULL, Request("bf16"), BOTH, BF16Unavailable, "no BF16"),
    ("no-gpu", FULL, Request(), BOTH, NoGpu, "--gpus all"),
    ("no-gpu", FULL, Request("fp8", allow_cpu=True), BOTH, FP8Unavailable, "needs a GPU"),
]


@pytest.mark.parametrize("profile, training, request_, backends, error, words", REFUSALS)
def test_policy_refuses_rather_than_running_something_else(nvml_profile, profile, training, request_, backends, error, words):
    nvml_profile(profile)
    with pytest.raises(error, match=words.replace("(", r"\(")):
        decide(read_gpus({}), model("llama-3.1-8b"), training, request_, backends)


def test_cpu_training_needs_allow_cpu_and_says_so(nvml_profile):
    nvml_profile("no-gpu")
    decision = decide(read_gpus({}), None, FULL, Request("bf16", allow_cpu=True), BOTH)
    assert (decision.device, decision.precision, decision.training_keys["use_cpu"]) == ("cpu", "bf16", True)
    auto = decide(read_gpus({}), None, FULL, Request(allow_cpu=True), BOTH)
    assert auto.precision == "fp32" and "CPU" in auto.reasons[0]


def test_strategies(nvml_profile):
    nvml_profile("h100-sxm-x8")
    gpus, facts = read_gpus({}), model("llama-3.1-8b")
    assert decide(gpus, facts, FULL, Request(strategy="fsdp2"), BOTH).strategy == "fsdp2"
    zero3 = decide(gpus, facts, FULL, Request(strategy="deepspeed-zero3"), BOTH)
    assert (zero3.strategy, zero3.deepspeed_stage) == ("deepspeed", 3)
    from_yaml = decide(gpus, facts, TrainingFacts(finetuning_type="full", deepspeed="ds.json"), Request(), BOTH)
    assert (from_yaml.strategy, from_yaml.deepspeed_stage) == ("deepspeed", None)


def test_small_model_stays_bf16_and_says_why(nvml_profile):
    nvml_profile("h100-sxm")
    tiny = read_model_facts(str(BENCH_MODELS / "llama-3.2-1b"))
    from dataclasses import replace

    small = replace(tiny, num_parameters=100_000_000)
    decision = decide(read_gpus({}), small, FULL, Request(), BOTH)
    assert decision.precision == "bf16"
    assert any("0.10B" in reason for reason in decision.reasons)


def measured_speedups(backend: str = "torchao", against: str = "compiled"):
    """{(shape, layers, finetuning): mean speedup of FP8 through backend over BF16 (compiled or eager)}, over
    every committed result."""
    import statistics

    runs: dict[tuple, list[float]] = {}
    for path in sorted((BENCH_MODELS.parent / "results").glob("*/*.json")):
        if path.parent.name.startswith("superseded"):
            continue  # measured before the launcher dropped the short last batch
        for row in json.loads(path.read_text())["ratios"]:
            speedup = row.get(f"speedup_vs_bf16_{against}")
            if row["backend"] == backend and speedup:
                runs.setdefault((row["shape"], row["layers"], row["finetuning"]), []).append(speedup)
    return {key: statistics.mean(values) for key, values in runs.items()}


def test_auto_never_keeps_the_slower_precision_on_a_measured_shape(nvml_profile):
    """FP8 where it was measured 5% faster or more (the crossover), and never BF16 where BF16 was measured more
    than 3% slower, nor FP8 where FP8 was."""
    from dataclasses import replace

    from llamafactory_fp8.model_facts import estimate_parameters

    nvml_profile("h100-sxm")
    speedups = measured_speedups()
    assert {finetuning for _, _, finetuning in speedups} == {"full", "lora"}
    for (shape, layers, finetuning), speedup in speedups.items():
        facts = read_model_facts(str(BENCH_MODELS / shape))
        if layers:
            config = json.loads((BENCH_MODELS / shape / "config.json").read_text())
            facts = replace(facts, num_parameters=estimate_parameters({**config, "num_hidden_layers": layers}))
        training = TrainingFacts(finetuning_type=finetuning)
        chosen = decide(read_gpus({}), facts, training, Request(), frozenset({"torchao"})).precision
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
        assert (torchao[key] >= te[key]) == (FP8_BACKEND_PREFERENCE[0] == "torchao"), key
