"""The trainer's causal-attention fix (causal_attention.py) on tiny random models: what SDPA is handed, compiled and
eager, and that the loss, the gradients and every pass that needs the mask are as Transformers makes them."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from llamafactory_fp8 import causal_attention
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)

SHAPE = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    attn_implementation="sdpa",
)


@pytest.fixture
def installed():
    causal_attention.install()
    yield
    causal_attention.uninstall()


@pytest.fixture
def sdpa_calls(monkeypatch):
    """Each eager SDPA call as (mask passed, is_causal)."""
    calls = []
    original = F.scaled_dot_product_attention

    def recording(*args, **kwargs):
        calls.append((kwargs.get("attn_mask") is not None, kwargs.get("is_causal")))
        return original(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    return calls


def right_padded_batch(lengths=(16, 11, 5), length=16):
    torch.manual_seed(1)
    input_ids = torch.randint(0, SHAPE["vocab_size"], (len(lengths), length))
    attention_mask = torch.zeros_like(input_ids)
    for row, real in enumerate(lengths):
        attention_mask[row, :real] = 1
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels)


def llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**SHAPE))


def compiled_sdpa_calls(model, batch):
    """(mask passed, is_causal) of every SDPA call in the graphs torch.compile traces for one training forward."""
    calls = []

    def recording_backend(graph_module, example_inputs):
        for node in graph_module.graph.nodes:
            if node.op == "call_function" and "scaled_dot_product_attention" in str(node.target):
                calls.append((node.kwargs.get("attn_mask") is not None, node.kwargs.get("is_causal")))
        return graph_module.forward

    torch._dynamo.reset()
    loss = torch.compile(model, backend=recording_backend)(**batch).loss
    torch._dynamo.reset()
    return calls, loss


def test_compiled_training_gets_the_causal_kernel_where_transformers_would_mask():
    model, batch = llama(), right_padded_batch()
    stock_calls, stock_loss = compiled_sdpa_calls(model, batch)
    causal_attention.install()
    try:
        fixed_calls, fixed_loss = compiled_sdpa_calls(model, batch)
    finally:
        causal_attention.uninstall()
    assert stock_calls == [(True, False)] * 2  # what made the compiled runs' attention 3x slower
    assert fixed_calls == [(False, True)] * 2
    assert torch.allclose(fixed_loss, stock_loss, atol=1e-6)


def test_right_padding_changes_no_loss_or_gradient(sdpa_calls):
    batch = right_padded_batch()
    reference, fixed = llama(), llama()
    reference(**batch).loss.backward()
    causal_attention.install()
    try:
        loss = fixed(**batch).loss
        loss.backward()
    finally:
        causal_attention.uninstall()
    assert sdpa_calls[-2:] == [(False, True)] * 2
    for (name, expected), (_, got) in zip(reference.named_parameters(), fixed.named_parameters(), strict=True):
        assert torch.allclose(got.grad, expected.grad, atol=1e-6), name


def test_passes_without_gradients_keep_the_mask(installed, sdpa_calls):
    """Evaluation and generation (left-padded) run without gradients: the padding mask must stay."""
    model, batch = llama(), right_padded_batch()
    left = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"].flip(-1))
    with torch.no_grad():
        fixed = model(**left).logits
        causal_attention.uninstall()
        stock = model(**left).logits
    assert sdpa_calls == [(True, False)] * 4
    assert torch.equal(fixed, stock)


def test_a_sliding_window_keeps_its_mask(installed, sdpa_calls):
    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(**SHAPE, sliding_window=4))
    model(**right_padded_batch()).loss.backward()
    assert sdpa_calls == [(True, False)] * 2


IMAGE, VISION_START = 5, 6


def qwen2_vl():
    torch.manual_seed(0)
    config = Qwen2VLConfig(
        text_config=dict(SHAPE, vocab_size=32, rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, spatial_merge_size=2),
        image_token_id=IMAGE,
        video_token_id=7,
        vision_start_token_id=VISION_START,
        attn_implementation="sdpa",
    )
    return Qwen2VLForConditionalGeneration(config)


@pytest.mark.parametrize("image_row", [0, 2], ids=["image-in-a-sequence", "image-in-the-padding"])
def test_qwen2_vl_image_tokens_and_mrope_change_no_loss_or_gradient(image_row, sdpa_calls):
    """A VLM's text attention under the fix, with M-RoPE positions and image tokens: inside a sequence, and in the
    padding, where LLaMA-Factory's collator puts the placeholder image of a text-only batch. (Its qwen2-vl collator
    needs Transformers' Qwen2VLProcessor, whose video processor imports torchvision, which the CPU lock lacks.)"""
    batch = right_padded_batch(lengths=(20, 14, 9), length=20)
    batch["input_ids"] = batch["input_ids"] % 24 + 8  # clear of the special tokens
    start = 2 if image_row == 0 else 12
    batch["input_ids"][image_row, start] = VISION_START
    batch["input_ids"][image_row, start + 1 : start + 5] = IMAGE  # 4 x 4 patches, merged 2 x 2: 4 tokens
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    batch.update(
        pixel_values=torch.randn(16, 3 * 2 * 14 * 14),
        image_grid_thw=torch.tensor([[1, 4, 4]]),
        mm_token_type_ids=(batch["input_ids"] == IMAGE).long(),
    )
    reference, fixed = qwen2_vl(), qwen2_vl()
    expected = reference(**batch).loss
    expected.backward()
    causal_attention.install()
    try:
        sdpa_calls.clear()
        loss = fixed(**batch).loss
        loss.backward()
    finally:
        causal_attention.uninstall()
    text_calls = [call for call in sdpa_calls if call[1]]  # the vision tower attends without a causal pattern
    assert text_calls == [(False, True)] * 2
    assert torch.allclose(loss, expected, atol=1e-6)
    for (name, want), (_, got) in zip(reference.named_parameters(), fixed.named_parameters(), strict=True):
        assert torch.allclose(got.grad, want.grad, atol=1e-6), name


def test_the_log_names_another_attention_as_what_it_is(capsys):
    guard = causal_attention.KeepMaskUnlessExact()
    state = SimpleNamespace(is_world_process_zero=True)
    model = LlamaForCausalLM(LlamaConfig(**{**SHAPE, "attn_implementation": "eager"}))
    guard.on_train_begin(None, state, None, model=model, train_dataloader=None)
    assert capsys.readouterr().err == "attention: eager, with Transformers' own masks\n"
