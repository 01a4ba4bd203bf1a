"""The trainer-side levers on the CPU: which layers the LoRA FP8 recipe converts, that an installed recipe reaches
the Accelerator's arguments, and the step profiler's stop after the profiled steps."""

import json
from types import SimpleNamespace

import pytest
import torch
from llamafactory_fp8 import contract, fp8_recipe
from llamafactory_fp8.errors import SettingInvalid
from llamafactory_fp8.step_profiler import profiler_from_environment

from .conftest import run_cli


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = torch.nn.Linear(1024, 1024, bias=False)
        self.k_proj = torch.nn.Linear(1024, 256, bias=False)  # a small GEMM: stays in BF16


class TinyLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList([Block(), Block()])
        self.lm_head = torch.nn.Linear(1024, 2048, bias=False)


def converted_layers(model, layer_filter):
    return sorted(
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and layer_filter(module, name)
    )


def test_lora_base_converts_the_frozen_large_base_layers_only():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(TinyLM(), LoraConfig(r=16, target_modules=["q_proj", "k_proj"]))
    converted = converted_layers(model, fp8_recipe.RECIPES["lora-base"].layer_filter)
    assert converted == [f"base_model.model.layers.{i}.q_proj.base_layer" for i in (0, 1)]


def test_lora_base_leaves_full_fine_tuning_in_bf16():
    assert converted_layers(TinyLM(), fp8_recipe.RECIPES["lora-base"].layer_filter) == []


def fake_trainer(mixed_precision):
    args = SimpleNamespace(
        mixed_precision=mixed_precision,
        deepspeed_plugin=None,
        ddp_find_unused_parameters=False,
        ddp_bucket_cap_mb=None,
        ddp_broadcast_buffers=None,
        ddp_static_graph=None,
        parallelism_config=None,
        torch_compile_backend=None,
        torch_compile_mode=None,
    )
    return SimpleNamespace(args=args, model=None)


@pytest.fixture
def restore_trainer(monkeypatch):
    from transformers import Trainer

    monkeypatch.setattr(Trainer, "_build_accelerator_args", Trainer._build_accelerator_args)
    return Trainer


def test_an_installed_recipe_reaches_the_accelerator_in_fp8_only(restore_trainer, monkeypatch):
    from accelerate.utils import AORecipeKwargs, DistributedDataParallelKwargs

    monkeypatch.setenv("ACCELERATE_FP8_BACKEND", "AO")
    assert fp8_recipe.install_from_environment({fp8_recipe.RECIPE_ENV: "lora-base"}).name == "lora-base"
    fp8_recipe.install_from_environment({fp8_recipe.RECIPE_ENV: "lora-base"})  # again: replaces, never stacks
    handlers = restore_trainer._build_accelerator_args(fake_trainer("fp8"))["kwargs_handlers"]
    assert [type(handler) for handler in handlers] == [DistributedDataParallelKwargs, AORecipeKwargs]
    assert handlers[1].module_filter_func is fp8_recipe.frozen_large_linear
    bf16 = restore_trainer._build_accelerator_args(fake_trainer("bf16"))["kwargs_handlers"]
    assert [type(handler) for handler in bf16] == [DistributedDataParallelKwargs]


@pytest.mark.parametrize(
    ("name", "scaling", "power_of_2"),
    [("tensorwise-pow2", "TENSORWISE", True), ("rowwise", "AXISWISE", True), ("rowwise-gw-hp", "AXISWISE", True)],
)
def test_a_scaling_recipe_hands_torchao_its_config_and_keeps_accelerates_layer_choice(
    restore_trainer, monkeypatch, name, scaling, power_of_2
):
    monkeypatch.setenv("ACCELERATE_FP8_BACKEND", "AO")
    fp8_recipe.install_from_environment({fp8_recipe.RECIPE_ENV: name})
    ao_recipe = restore_trainer._build_accelerator_args(fake_trainer("fp8"))["kwargs_handlers"][-1]
    assert ao_recipe.module_filter_func is None  # Accelerate then converts all but the first and last linear layer
    assert ao_recipe.config.cast_config_input.scaling_granularity.name == scaling
    assert ao_recipe.config.round_scales_to_power_of_2 is power_of_2


def test_every_recipe_hands_accelerate_a_config_since_fsdp2_reads_one():
    """accelerate#3830: under FSDP2, Accelerate 1.11 reads the config's float8 all-gather switch; None failed."""
    from torchao.float8 import Float8LinearConfig

    for recipe in (fp8_recipe.DEFAULT, fp8_recipe.RECIPES["lora-base"]):
        assert recipe.float8_config() == Float8LinearConfig()


def test_no_recipe_installs_torchaos_defaults_and_an_unknown_one_is_refused(restore_trainer, monkeypatch):
    monkeypatch.setenv("ACCELERATE_FP8_BACKEND", "AO")
    assert fp8_recipe.install_from_environment({}) is fp8_recipe.DEFAULT
    ao_recipe = restore_trainer._build_accelerator_args(fake_trainer("fp8"))["kwargs_handlers"][-1]
    assert ao_recipe.config is not None and ao_recipe.module_filter_func is None  # Accelerate's own layer choice
    with pytest.raises(ValueError, match="lora-base"):
        fp8_recipe.install_from_environment({fp8_recipe.RECIPE_ENV: "nope"})


@pytest.mark.parametrize("value", ["3", "3-2:/tmp/p", "0-1:/tmp/p", "a-b:/tmp/p", "3-4:"])
def test_a_malformed_profile_request_is_refused(value):
    with pytest.raises(SettingInvalid, match=contract.PROFILE.name):
        profiler_from_environment({contract.PROFILE.name: value})


@pytest.mark.slow
def test_a_profiled_run_writes_its_table_and_ends_after_the_profiled_steps(tmp_path):
    output_dir, profile_dir = tmp_path / "out", tmp_path / "profile"
    result = run_cli(
        "train",
        "configs/examples/demo.yaml",
        "--bf16",
        "--allow-cpu",
        f"output_dir={output_dir}",
        f"model_name_or_path={tmp_path / 'tiny-llama'}",
        "max_steps=50",
        "logging_steps=2",
        **{contract.PROFILE.name: f"5-6:{profile_dir}"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    profile = json.loads((profile_dir / "profile.json").read_text())
    assert profile["steps"] == 2 and profile["wall_s"] > 0 and profile["kernels"]
    logged = [json.loads(line)["current_steps"] for line in (output_dir / "trainer_log.jsonl").read_text().splitlines()]
    assert max(logged) == 4  # step 6 ended the run before its log; the saved model is skipped too
    assert not (output_dir / "model.safetensors").exists()
