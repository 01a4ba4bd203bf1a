"""The lora-base-fp8-weights recipe against lora-base: LoRA on a small Llama whose base layers torchao converts
(both sides >= 1024), the same batch through each. Holding the frozen weights in FP8, cast once, must change no
number a run produces, eager or compiled, and must halve what those weights hold."""

import copy

import pytest
import torch
from llamafactory_fp8.fp8_recipe import RECIPES
from llamafactory_fp8.frozen_fp8_weights import cast_frozen_weights_once

CACHED = RECIPES["lora-base-fp8-weights"]


@pytest.fixture(scope="module")
def lora_base_model():
    """A one-layer Llama under PEFT's LoRA (r8, every linear layer), converted as Accelerate converts it for the
    lora-base recipe."""
    from peft import LoraConfig, get_peft_model
    from torchao.float8 import convert_to_float8_training
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=1024,
        intermediate_size=2048,
        num_hidden_layers=1,
        num_attention_heads=8,
        num_key_value_heads=8,
        vocab_size=512,
    )
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
    cast_frozen_weights_once(cached)
    layer_weights = sum(
        module.in_features * module.out_features
        for module in lora_base_model.modules()
        if type(module).__name__ == "Float8Linear"
    )
    assert before - frozen_bytes(cached) == layer_weights  # 2 bytes a weight became 1
    assert cast_frozen_weights_once(cached) == 0  # a second call finds nothing left to cast
