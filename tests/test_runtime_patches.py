"""A rank's runtime patches. Those for Transformer Engine 2.20 run on a stand-in package laid out like it (TE needs
CUDA): `transformer_engine.pytorch` does not import its `fp8` submodule, which Accelerate reads as an attribute, and
its `checkpoint` takes torch.utils.checkpoint's arguments."""

import sys

import pytest
from llamafactory_fp8.runtime_patches import (
    let_accelerate_find_te_fp8,
    let_peft_build_lora_beside_newer_torchao,
    recompute_te_layers_in_fp8,
)


@pytest.fixture
def te_like_2_20(tmp_path, monkeypatch):
    package = tmp_path / "transformer_engine" / "pytorch"
    package.mkdir(parents=True)
    (package.parent / "__init__.py").write_text("")
    # TE's checkpoint, standing in: it records what it was called with and runs torch's
    (package / "__init__.py").write_text(
        "import torch.utils.checkpoint\n"
        "calls = []\n"
        "def checkpoint(function, *args, **kwargs):\n"
        "    calls.append(kwargs)\n"
        "    return torch.utils.checkpoint.checkpoint(function, *args, **kwargs)\n"
    )
    (package / "fp8.py").write_text("def check_mxfp8_support():\n    return False, 'needs Blackwell'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in [name for name in sys.modules if name.startswith("transformer_engine")]:
        del sys.modules[name]


def test_te_runs_get_the_fp8_attribute_accelerate_reads(te_like_2_20, monkeypatch):
    import transformer_engine.pytorch as te

    assert not hasattr(te, "fp8")  # what failed on the GPU machine: AttributeError in Accelerate
    monkeypatch.setenv("ACCELERATE_FP8_BACKEND", "TE")
    let_accelerate_find_te_fp8()
    assert te.fp8.check_mxfp8_support() == (False, "needs Blackwell")


def test_other_runs_do_not_import_transformer_engine(te_like_2_20, monkeypatch):
    monkeypatch.setenv("ACCELERATE_FP8_BACKEND", "AO")
    let_accelerate_find_te_fp8()
    assert "transformer_engine" not in sys.modules


def checkpointed_layers_in_one_step(use_reentrant_gc=True) -> list[dict]:
    """A tiny Llama prepared by LLaMA-Factory's own training preparation (gradient checkpointing on, as its
    default), one forward and backward: the keywords of each call TE's checkpoint got (one a checkpointed layer)."""
    from types import SimpleNamespace

    import torch
    import transformer_engine.pytorch as te
    from llamafactory.model.model_utils.checkpointing import prepare_model_for_training
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, vocab_size=64)
    model = LlamaForCausalLM(LlamaConfig(**shape))
    switches = dict(upcast_layernorm=False, upcast_lmhead_output=False, disable_gradient_checkpointing=False)
    prepare_model_for_training(
        model, SimpleNamespace(**switches, use_unsloth_gc=False, use_reentrant_gc=use_reentrant_gc)
    )
    model.train()
    tokens = torch.randint(0, 64, (2, 8))
    model(input_ids=tokens, labels=tokens).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    return te.calls


def test_te_runs_recompute_their_checkpointed_layers_through_te_checkpoint(te_like_2_20, monkeypatch, capsys):
    """Through torch's checkpoint the recompute runs outside the FP8 autocast, where TE's layers fall back to BF16;
    TE's own checkpoint restores it. The reentrant choice (LLaMA-Factory's use_reentrant_gc) is kept."""
    from llamafactory.model.model_utils import checkpointing

    # the patch replaces LLaMA-Factory's function: monkeypatch puts the original back after the test
    monkeypatch.setattr(
        checkpointing, "get_custom_gradient_checkpointing_func", checkpointing.get_custom_gradient_checkpointing_func
    )
    monkeypatch.setenv("ACCELERATE_FP8_BACKEND", "TE")
    recompute_te_layers_in_fp8()
    assert checkpointed_layers_in_one_step() == [{"use_reentrant": True}] * 3
    assert "checkpointed layers recompute through TE's checkpoint" in capsys.readouterr().out
    import transformer_engine.pytorch as te

    te.calls.clear()
    assert checkpointed_layers_in_one_step(use_reentrant_gc=False) == [{"use_reentrant": False}] * 3


def test_other_runs_checkpoint_through_torch(te_like_2_20, monkeypatch, capsys):
    from llamafactory.model.model_utils import checkpointing

    monkeypatch.setattr(
        checkpointing, "get_custom_gradient_checkpointing_func", checkpointing.get_custom_gradient_checkpointing_func
    )
    monkeypatch.setenv("ACCELERATE_FP8_BACKEND", "AO")
    recompute_te_layers_in_fp8()
    assert checkpointed_layers_in_one_step() == []
    assert "TE's checkpoint" not in capsys.readouterr().out


def test_the_known_noise_is_quiet_and_nothing_else_is():
    """torchao's extensions built for another torch, and torch's pytree notice, print on every import here."""
    import subprocess

    probe = "import logging; {quiet}import torchao; logging.getLogger('torchao').warning('a real warning')"
    loud = subprocess.run([sys.executable, "-c", probe.format(quiet="")], capture_output=True, text=True)
    quiet_code = "from llamafactory_fp8.runtime_patches import quiet_known_noise; quiet_known_noise(); "
    quiet = subprocess.run([sys.executable, "-c", probe.format(quiet=quiet_code)], capture_output=True, text=True)
    if "Failed to load" not in loud.stderr:
        pytest.skip("torchao's extensions load with this torch: nothing to quiet")
    assert "Failed to load" not in quiet.stderr and "Enum subclass" not in quiet.stderr
    assert "a real warning" in quiet.stderr


def test_lora_builds_where_torchao_no_longer_has_the_class_peft_0_18_asks_for(monkeypatch):
    """torchao 0.18 removed LinearActivationQuantizedTensor, which PEFT 0.18 imports for every LoRA target: with
    torchao 0.18.0 on the path, every LoRA model here failed to build (bench/README.md, "torchao 0.18")."""
    import torchao.quantization
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    def tiny_lora():
        shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64)
        return get_peft_model(LlamaForCausalLM(LlamaConfig(**shape)), LoraConfig(r=4, target_modules="all-linear"))

    monkeypatch.delattr(torchao.quantization, "LinearActivationQuantizedTensor")
    with pytest.raises(ImportError, match="LinearActivationQuantizedTensor"):
        tiny_lora()
    let_peft_build_lora_beside_newer_torchao()
    trainable, _ = tiny_lora().get_nb_trainable_parameters()
    assert trainable > 0


def test_without_torchao_the_lora_patch_imports_nothing(monkeypatch):
    """A BF16 or Transformer Engine environment may have no torchao: every run would fail at the import."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else real(name, *a))
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)  # importing it now raises ImportError
    let_peft_build_lora_beside_newer_torchao()
