"""The lora-base-fp8-weights recipe against lora-base: LoRA on a small Llama whose base layers torchao converts
(both sides >= 1024), the same batch through each, then a real run of each. Holding the frozen weights in FP8, cast
once, must change no number a run produces, eager or compiled, and must halve what those weights hold."""

import copy
import gc
import os
import subprocess
import sys
import weakref

import pytest
import torch
import yaml
from llamafactory_fp8.backends import TORCHAO
from llamafactory_fp8.demo import build_demo_model
from llamafactory_fp8.fp8_recipe import RECIPES
from llamafactory_fp8.frozen_fp8_weights import cast_frozen_weights_once
from llamafactory_fp8.lf_files import lf_data_dir, lf_examples_dir
from llamafactory_fp8.plan import format_value

from .conftest import ROOT

EXAMPLES = lf_examples_dir()
# One Llama decoder layer whose seven linear layers are all 1024 or wider, so the recipes convert every one
CONVERTED_LAYER = dict(
    hidden_size=1024, intermediate_size=2048, num_hidden_layers=1, num_attention_heads=8, num_key_value_heads=8
)

CACHED = RECIPES["lora-base-fp8-weights"]


@pytest.fixture(scope="module")
def lora_base_model():
    """A one-layer Llama under PEFT's LoRA (r8, every linear layer), converted as Accelerate converts it for the
    lora-base recipe."""
    from peft import LoraConfig, get_peft_model
    from torchao.float8 import convert_to_float8_training
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**CONVERTED_LAYER, vocab_size=512)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", init_lora_weights=False))
    lora_base = RECIPES["lora-base"]
    convert_to_float8_training(model, config=lora_base.float8_config(), module_filter_fn=lora_base.layer_filter)
    return model


def loss_and_gradients(model, compiled: bool):
    torch.manual_seed(1)
    input_ids = torch.randint(0, 512, (2, 32))
    run = torch.compile(model) if compiled else model
    loss = run(input_ids=input_ids, labels=input_ids).loss
    loss.backward()
    gradients = {name: param.grad.clone() for name, param in model.named_parameters() if param.requires_grad}
    model.zero_grad(set_to_none=True)
    return loss.detach(), gradients


def frozen_bytes(model) -> int:
    def held(param):
        data = getattr(param, "_data", param)  # a Float8TrainingTensor holds its FP8 bytes in _data
        return data.numel() * data.element_size()

    return sum(held(param) for param in model.parameters() if not param.requires_grad)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_frozen_weights_held_in_fp8_give_the_same_loss_and_gradients(lora_base_model, compiled):
    cached = copy.deepcopy(lora_base_model)
    assert cast_frozen_weights_once(cached) == 7  # q, k, v, o, gate, up, down: each >= 1024 on both sides
    expected_loss, expected = loss_and_gradients(lora_base_model, compiled)
    loss, gradients = loss_and_gradients(cached, compiled)
    assert torch.equal(loss, expected_loss)
    assert gradients.keys() == expected.keys() and len(gradients) == 14  # lora_A and lora_B of each layer
    assert all(torch.equal(gradients[name], expected[name]) for name in expected)


def test_the_frozen_base_layers_hold_half_their_bytes_and_are_cast_once(lora_base_model):
    cached = copy.deepcopy(lora_base_model)
    before = frozen_bytes(cached)
    bf16_weights = [
        weakref.ref(module.weight) for module in cached.modules() if type(module).__name__ == "Float8Linear"
    ]
    cast_frozen_weights_once(cached)
    gc.collect()
    layer_weights = sum(
        module.in_features * module.out_features
        for module in lora_base_model.modules()
        if type(module).__name__ == "Float8Linear"
    )
    assert before - frozen_bytes(cached) == layer_weights  # 2 bytes a weight became 1
    assert all(reference() is None for reference in bf16_weights), "a BF16 copy outlived its cast"
    assert cast_frozen_weights_once(cached) == 0  # a second call finds nothing left to cast


@pytest.fixture(scope="module")
def wide_demo_model(tmp_path_factory):
    """The demo's tokenizer on a one-layer Llama 1024 wide, so the recipe's filter converts its base layers."""
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    demo = build_demo_model(tmp_path_factory.mktemp("demo") / "tiny-llama", ROOT / "data")
    config = AutoConfig.from_pretrained(demo)
    config.update({**CONVERTED_LAYER, "head_dim": 1024 // 8})
    wide = tmp_path_factory.mktemp("wide") / "wide-llama"
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(wide)
    AutoTokenizer.from_pretrained(demo).save_pretrained(wide)
    return wide


@pytest.mark.slow
def test_a_lora_run_with_its_base_held_in_fp8_saves_the_adapter_lora_base_saves(wide_demo_model, tmp_path):
    """The trainer's real path, FP8 through torchao on the CPU (which Accelerate allows and the launcher never plans):
    `accelerate launch` with the product's FP8 config and keys (compiled), LLaMA-Factory's LoRA example (gradient
    checkpointing on), a checkpoint saved midway. Three steps with each recipe give the same adapter, byte for byte."""
    accelerate = tmp_path / "accelerate.yaml"
    config = yaml.safe_load((ROOT / "configs" / "accelerate" / "fp8-torchao.yaml").read_text())
    accelerate.write_text(yaml.safe_dump({**config, "use_cpu": True}))
    logs, adapters = {}, {}
    for recipe in ("lora-base", "lora-base-fp8-weights"):
        output_dir = tmp_path / recipe
        result = subprocess.run(
            [
                sys.executable,
                *("-m", "accelerate.commands.launch", "--quiet", "--config_file", str(accelerate)),
                *("-m", "llamafactory_fp8.rank", str(EXAMPLES / "train_lora" / "qwen3_lora_sft.yaml")),
                f"model_name_or_path={wide_demo_model}",
                f"output_dir={output_dir}",
                f"dataset_dir={lf_data_dir()}",
                *("max_steps=3", "save_steps=2", "cutoff_len=64", "max_samples=16", "report_to=none"),
                *("per_device_train_batch_size=2", "gradient_accumulation_steps=1", "preprocessing_num_workers=1"),
                *(f"{key}={format_value(value)}" for key, value in TORCHAO.training_keys.items()),  # compiled
                *("use_cpu=true", "plot_loss=false"),
            ],
            env={
                **os.environ,
                "LLAMAFACTORY_FP8_RECIPE": recipe,
                "PYTHONUNBUFFERED": "1",
                "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor" / recipe),
            },
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
        logs[recipe] = result.stdout + result.stderr
        assert result.returncode == 0, logs[recipe][-4000:]
        assert "FP8 active: 7 of 22 linear layers run in FP8" in logs[recipe]
        adapters[recipe] = (output_dir / "adapter_model.safetensors").read_bytes()
        assert (output_dir / "checkpoint-2" / "adapter_model.safetensors").is_file()
    assert "7 frozen layers' weights cast to FP8 once" in logs["lora-base-fp8-weights"]
    assert "cast to FP8 once" not in logs["lora-base"]
    assert adapters["lora-base-fp8-weights"] == adapters["lora-base"]
