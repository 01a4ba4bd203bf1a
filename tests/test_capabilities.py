"""What this image cannot run is refused in one line (exit 25) before anything loads, with what to do instead:
the stages, trainers and options of LLaMA-Factory's own examples that need a package or a device it lacks."""

import json

import pytest

from .conftest import model_dir, run_cli

TEXT_MODEL = str(model_dir("qwen2.5-0.5b"))


def model_like(tmp_path, **extra) -> str:
    """A copy of a real config.json with what a quantized or multimodal release adds to it."""
    folder = tmp_path / "model"
    folder.mkdir()
    config = json.loads((model_dir("qwen2.5-0.5b") / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **extra}))
    return str(folder)


CASES = {
    "PPO": ({"stage": "ppo", "reward_model": "saves/rm"}, "stage: ppo", "trl"),
    "KTransformers": ({"use_kt": True}, "use_kt: True", "ktransformers"),
    "Megatron": ({"tensor_model_parallel_size": 1}, "tensor_model_parallel_size (Megatron)", "mcore_adapter"),
    "Ray": ({"ray_num_workers": 4}, "ray_num_workers (Ray)", "ray"),
    "a remote dataset_dir": ({"dataset_dir": "REMOTE:llamafactory/demo_data"}, "REMOTE:", "ray"),
    "images": ({"image_max_pixels": 262144}, "image_max_pixels", "torchvision"),
    "QLoRA": ({"quantization_bit": 4}, "quantization_bit with quantization_method: bnb", "bitsandbytes"),
    "generated predictions": ({"do_predict": True, "predict_with_generate": True}, "predict_with_generate", "jieba"),
    "GPTQ on the fly": ({"quantization_bit": 4, "quantization_method": "gptq"}, "gptq", "gptqmodel"),
    "Unsloth": ({"use_unsloth": True}, "use_unsloth: True", "unsloth"),
    "Liger": ({"enable_liger_kernel": True}, "enable_liger_kernel: True", "liger_kernel"),
    "mixture of depths": ({"mixture_of_depths": "convert"}, "mixture_of_depths: convert", "MoD"),
    "GaLore": ({"use_galore": True}, "use_galore: True", "galore_torch"),
    "APOLLO": ({"use_apollo": True}, "use_apollo: True", "apollo_torch"),
    "BAdam": ({"use_badam": True}, "use_badam: True", "badam"),
    "Adam-mini": ({"use_adam_mini": True}, "use_adam_mini: True", "adam_mini"),
    "SwanLab": ({"use_swanlab": True}, "use_swanlab: True", "swanlab"),
    "wandb": ({"report_to": "wandb"}, "report_to: wandb", "wandb"),
    "wandb in a list": ({"report_to": ["none", "wandb"]}, "report_to: wandb", "wandb"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_an_option_this_image_lacks_is_one_line_and_exit_25(tmp_path, case):
    keys, asked, lacking = CASES[case]
    config = tmp_path / "train.yaml"
    config.write_text(
        json.dumps({"model_name_or_path": TEXT_MODEL, "output_dir": str(tmp_path / "out"), "do_train": True, **keys})
    )
    result = run_cli("train", str(config), "--dry-run", profile="h100-sxm")
    assert result.returncode == 25, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "this image cannot run" in line and asked in line and lacking in line


@pytest.mark.parametrize(
    "extra, asked",
    [
        ({"quantization_config": {"quant_method": "awq", "bits": 4}}, "AWQ-quantized model"),
        ({"vision_config": {"depth": 2}}, "vision-language model"),
    ],
)
def test_what_the_models_own_config_says_counts_too(tmp_path, extra, asked):
    config = tmp_path / "train.yaml"
    model = model_like(tmp_path, **extra)
    config.write_text(json.dumps({"model_name_or_path": model, "output_dir": str(tmp_path / "out"), "do_train": True}))
    result = run_cli("train", str(config), "--dry-run", profile="h100-sxm")
    assert result.returncode == 25 and asked in result.stderr, result.stderr


def test_a_v1_config_is_named_as_such(tmp_path):
    config = tmp_path / "v1.yaml"
    config.write_text("model: Qwen/Qwen3-0.6B\ntrain_dataset: data/v1_sft_demo.yaml\noutput_dir: out\n")
    result = run_cli("train", str(config), "--dry-run", profile="h100-sxm")
    assert result.returncode == 25 and "v1 trainer schema" in result.stderr, result.stderr


def test_what_it_can_run_passes(tmp_path):
    config = tmp_path / "train.yaml"
    keys = {"model_name_or_path": TEXT_MODEL, "output_dir": str(tmp_path / "out"), "report_to": "none", "stage": "dpo"}
    keys["do_train"] = True
    config.write_text(json.dumps(keys))
    assert run_cli("train", str(config), "--dry-run", profile="h100-sxm").returncode == 0


def _transformers_builds(optim: str, tmp_path) -> bool:
    """Whether the pinned Transformers' Trainer builds this optimizer here, for a model with linear layers."""
    import torch
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path / "args"), optim=optim, optim_target_modules=["proj"])
    model = torch.nn.Sequential()
    model.add_module("proj", torch.nn.Linear(8, 8))
    try:
        Trainer.get_optimizer_cls_and_kwargs(args, model)
    except (ImportError, ValueError, RuntimeError):
        return False
    return True


def _optimizer_names() -> list[str]:
    from transformers.training_args import OptimizerNames

    return [name.value for name in OptimizerNames]


@pytest.mark.parametrize("optim", _optimizer_names())
def test_an_optimizer_transformers_cannot_build_here_is_refused_before_loading(tmp_path, optim):
    """Transformers' Trainer imports an optimizer's package only once the model has loaded (minutes for an 8B), then
    ends in a traceback: each of its optimizers that it cannot build in this environment is refused in one line (exit
    25) before the launch, and each it can is planned."""
    config = tmp_path / "train.yaml"
    keys = {"model_name_or_path": TEXT_MODEL, "output_dir": str(tmp_path / "out"), "do_train": True, "optim": optim}
    config.write_text(json.dumps(keys))
    result = run_cli("train", str(config), "--dry-run", profile="h100-sxm")
    if _transformers_builds(optim, tmp_path):
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode == 25, result.stdout + result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert f"optim: {optim}" in line and "drop optim for the default (adamw_torch_fused)" in line
