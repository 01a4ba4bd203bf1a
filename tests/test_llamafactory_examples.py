"""LLaMA-Factory's own examples, as its users start from them (the pinned release's examples/, unpacked by
scripts/bootstrap from its hash-locked source archive): each is planned as written on recorded GPUs, from where
LLaMA-Factory's README runs them (its relative deepspeed/ and data/ paths), with a loopback Hub serving the shapes
this repository holds. Each cell is a plan, or one line with the exit code the README documents; a refusal not in
REFUSED fails, as does one listed here that no longer happens."""

import contextlib
import io
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from llamafactory_fp8.cli import main
from llamafactory_fp8.lf_files import lf_examples_dir

from .conftest import BENCH_MODELS, model_dir
from .loopback_hub import LoopbackHub, serving

EXAMPLES = lf_examples_dir()
GROUPS = ("train_full", "train_lora", "train_qlora", "extras", "v1", "merge_lora", "inference")
CORPUS = sorted(
    p.relative_to(EXAMPLES) for p in EXAMPLES.glob("*/**/*.yaml") if p.relative_to(EXAMPLES).parts[0] in GROUPS
)


def _config(shape_dir, **added) -> bytes:
    return json.dumps({**json.loads((shape_dir / "config.json").read_text()), **added}).encode()


LLAMA3_8B = BENCH_MODELS / "llama-3.1-8b"  # Meta-Llama-3-8B's shape (3.1 changed the RoPE scaling, not the shape)
QUANTIZED = {"quant_method": None, "bits": 4}


class ExamplesHub(LoopbackHub):
    """The examples' Hub models whose shape this repository holds; the quantized releases are that shape with the
    quantization_config their config.json carries. Any other model: the Hub cannot say, and its size stays unknown."""

    configs = {
        "meta-llama/Meta-Llama-3-8B-Instruct": _config(LLAMA3_8B),
        "TechxGenus/Meta-Llama-3-8B-Instruct-AWQ": _config(
            LLAMA3_8B, quantization_config={**QUANTIZED, "quant_method": "awq"}
        ),
        "TechxGenus/Meta-Llama-3-8B-Instruct-GPTQ": _config(
            LLAMA3_8B, quantization_config={**QUANTIZED, "quant_method": "gptq"}
        ),
        "ISTA-DASLab/Meta-Llama-3-8B-Instruct-AQLM-2Bit-1x16": _config(
            LLAMA3_8B, quantization_config={**QUANTIZED, "quant_method": "aqlm"}
        ),
        "Qwen/Qwen2.5-0.5B-Instruct": _config(model_dir("qwen2.5-0.5b")),
    }
    unknown_status = 503


# example: (exit code, words of its one line). Every example not here plans.
REFUSED = {
    "extras/adam_mini/qwen2_full_sft.yaml": (25, "use_adam_mini: True: it needs adam_mini"),
    "extras/apollo/llama3_full_sft.yaml": (25, "use_apollo: True: it needs apollo_torch"),
    "extras/badam/llama3_full_sft.yaml": (25, "use_badam: True: it needs badam"),
    "extras/galore/llama3_full_sft.yaml": (25, "use_galore: True: it needs galore_torch"),
    "extras/mod/llama3_full_sft.yaml": (25, "mixture_of_depths: convert: it needs MoD"),
    "extras/asft/llama2_full_asft.yaml": (26, "dataset: med is not in dataset_info.json"),
    "extras/asft/qwen2_full_asft.yaml": (26, "dataset: math is not in dataset_info.json"),
    "extras/fp8/llama3_fp8_deepspeed_sft.yaml": (25, "report_to: wandb"),
    "extras/fp8/llama3_fp8_fsdp_sft.yaml": (25, "report_to: wandb"),
    "extras/fsdp_qlora/llama3_lora_sft.yaml": (25, "bitsandbytes"),
    "extras/nlg_eval/llama3_lora_predict.yaml": (25, "predict_with_generate"),
    "extras/multi_tokens/tokens_cfg.yaml": (13, "no model_name_or_path"),  # a token list, not a training config
    "extras/oft/qwen2_5vl_oft_sft.yaml": (25, "torchvision"),
    "extras/qoft/llama3_oft_sft_awq.yaml": (25, "AWQ-quantized model"),
    "extras/qoft/llama3_oft_sft_bnb_npu.yaml": (25, "bitsandbytes"),
    "extras/qoft/llama3_oft_sft_gptq.yaml": (25, "GPTQ-quantized model"),
    "train_full/qwen3vl_full_sft.yaml": (25, "torchvision"),
    "train_lora/qwen3_lora_sft_ray.yaml": (25, "Ray"),
    "train_lora/qwen3vl_lora_dpo.yaml": (25, "torchvision"),
    "train_lora/qwen3vl_lora_sft.yaml": (25, "torchvision"),
    "train_qlora/llama3_lora_sft_aqlm.yaml": (25, "AQLM-quantized model"),
    "train_qlora/llama3_lora_sft_awq.yaml": (25, "AWQ-quantized model"),
    "train_qlora/llama3_lora_sft_gptq.yaml": (25, "GPTQ-quantized model"),
    "train_qlora/qwen3_lora_sft_bnb_npu.yaml": (25, "bitsandbytes"),
    "train_qlora/qwen3_lora_sft_otfq.yaml": (25, "bitsandbytes"),
    **{str(path): (25, "v1 trainer schema") for path in CORPUS if path.parts[0] == "v1"},
    # the configs of LLaMA-Factory's other commands, which its README runs beside its training examples
    **{str(path): (13, "`llamafactory-cli export` runs") for path in CORPUS if path.parts[0] == "merge_lora"},
    **{str(path): (13, "`llamafactory-cli chat` runs") for path in CORPUS if path.parts[0] == "inference"},
}


@pytest.fixture(scope="module")
def hub():
    with serving(ExamplesHub) as endpoint:
        yield endpoint


def test_the_corpus_is_llamafactorys_examples():
    assert len(CORPUS) >= 50 and set(REFUSED) <= {str(path) for path in CORPUS}


@pytest.mark.parametrize("where", ["lf-root", "users-folder"])
@pytest.mark.parametrize("profile", ["h100-sxm-x8", "a100"])
@pytest.mark.parametrize("example", CORPUS, ids=str)
def test_each_example_is_a_plan_or_its_documented_refusal(
    example, profile, where, hub, nvml_profile, monkeypatch, tmp_path
):
    """From LLaMA-Factory's root, as its README runs them, and copied into a user's folder of their own, as the
    container runs them (`compose run train configs/x.yaml` in /workspace): the relative files they name
    (examples/deepspeed/...) are then LLaMA-Factory's release copies."""
    config = EXAMPLES / example
    if where == "lf-root":
        monkeypatch.chdir(EXAMPLES.parent)
    else:
        (tmp_path / "work" / "configs").mkdir(parents=True)
        config = Path(shutil.copy(config, tmp_path / "work" / "configs"))
        monkeypatch.chdir(tmp_path / "work")
    for name in ("HF_HUB_OFFLINE", "NNODES", "USE_MODELSCOPE_HUB"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", hub)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("LLAMAFACTORY_FP8_STATE_DIR", str(tmp_path / "state"))
    nvml_profile(profile)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["train", str(config), "--dry-run"])
    errors = [line for line in stderr.getvalue().splitlines() if line.startswith("llamafactory-fp8: error:")]
    expected_code, words = REFUSED.get(str(example), (0, None))
    assert code == expected_code, stderr.getvalue()[-2000:]
    if words is not None:
        assert len(errors) == 1 and words in errors[0], errors
    else:
        assert not errors and "  choice " in stdout.getvalue()
        for named in re.findall(r" deepspeed=(\S+)", stdout.getvalue()):  # what LLaMA-Factory will open
            assert (Path.cwd() / named).is_file(), named
    assert not os.path.exists(EXAMPLES.parent / "saves"), "a dry run writes nothing"


def test_a_memory_saving_optimizer_is_planned_without_an_estimate_rather_than_refused_on_one(planner):
    """GaLore exists to fit an 8B full fine-tune where AdamW does not; the memory model does not describe it."""
    keys = {"model_name_or_path": str(BENCH_MODELS / "llama-3.1-8b"), "finetuning_type": "full", "use_galore": True}
    plan = planner("a100", keys)
    assert plan.decision.memory is None
    assert "memory not estimated: GaLore's optimizer is not in the memory model" in " ".join(plan.decision.reasons)
