"""The real path on CPU: llamafactory-fp8 -> accelerate launch -> patched LLaMA-Factory -> a trained tiny model.
Only NVML is faked (as a machine without a GPU)."""

import json

import pytest

from .conftest import run_cli

DEMO = "configs/examples/demo.yaml"


def losses(output_dir):
    records = [json.loads(line) for line in (output_dir / "trainer_log.jsonl").read_text().splitlines()]
    return [record["loss"] for record in records if "loss" in record]


@pytest.mark.slow
@pytest.mark.parametrize(
    "finetuning, extra, weights, min_drop",
    [
        ("full", [], "model.safetensors", 1.5),
        # LoRA over a frozen random-init base learns far less than full fine-tuning; it still must learn.
        (
            "lora",
            ["finetuning_type=lora", "lora_target=all", "lora_rank=16", "learning_rate=1.0e-2", "max_steps=60"],
            "adapter_model.safetensors",
            0.25,
        ),
    ],
)
def test_demo_trains_and_loss_goes_down(tmp_path, finetuning, extra, weights, min_drop):
    output_dir, model_dir = tmp_path / "out", tmp_path / "tiny-llama"
    result = run_cli(
        "train", DEMO, "--bf16", "--allow-cpu", f"output_dir={output_dir}", f"model_name_or_path={model_dir}", *extra
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "BF16 on cpu, 1 process" in result.stdout
    assert f"building the demo model at {model_dir}" in result.stdout
    assert "attention: SDPA causal kernel for training batches" in result.stdout + result.stderr
    curve = losses(output_dir)
    assert len(curve) >= 10
    first, last = sum(curve[:3]) / 3, sum(curve[-3:]) / 3
    assert last < first - min_drop, curve
    assert (output_dir / "training_loss.png").stat().st_size > 0
    assert (output_dir / weights).stat().st_size > 0
    assert (output_dir / "accelerate_config.yaml").is_file()


def test_dry_run_prints_the_plan_and_touches_nothing(tmp_path):
    output_dir = tmp_path / "out"
    result = run_cli(
        "train", DEMO, "--allow-cpu", f"output_dir={output_dir}", f"model_name_or_path={tmp_path / 'm'}", "--dry-run"
    )
    assert result.returncode == 0, result.stderr
    for label in ("GPUs", "model", "training", "choice", "why", "accelerate", "command"):
        assert f"\n  {label}" in result.stdout
    assert "-m llamafactory_fp8.rank" in result.stdout and "use_cpu=true" in result.stdout
    assert not output_dir.exists() and not (tmp_path / "m").exists()


def test_dry_run_on_an_h100_shows_the_fp8_keys(tmp_path):
    pytest.importorskip(
        "torchao", reason="the FP8 dry run needs an FP8 backend installed (scripts/bootstrap adds torchao)"
    )
    result = run_cli("train", DEMO, "--fp8", f"output_dir={tmp_path}/out", "--dry-run", profile="h100-sxm")
    assert result.returncode == 0, result.stderr
    assert "FP8 (torchao) on cuda, 1 process" in result.stdout
    assert "fp8=true fp8_backend=torchao bf16=true fp16=false torch_compile=true" in result.stdout
    assert "fp8-torchao.yaml" in result.stdout


def test_inspect_reports_gpus_and_choice():
    result = run_cli("inspect", "--json", profile="h100-sxm-x8")
    report = json.loads(result.stdout)
    assert len(report["gpus"]["gpus"]) == 8
    text = run_cli("inspect", profile="a100").stdout
    assert "NVIDIA A100-SXM4-80GB, compute capability 8.0" in text and "train would choose BF16" in text


def test_dry_run_json_emits_the_plan_the_block_prints(tmp_path):
    output_dir = tmp_path / "out"
    args = [
        "train",
        DEMO,
        "--allow-cpu",
        f"output_dir={output_dir}",
        f"model_name_or_path={tmp_path / 'm'}",
        "max_steps=7",
        "--dry-run",
    ]
    plan = json.loads(run_cli(*args, "--json").stdout)
    block = run_cli(*args).stdout
    keys = {key["name"]: key for key in plan["training_keys"]}
    assert (keys["max_steps"]["value"], keys["max_steps"]["source"], keys["max_steps"]["replaces"]) == (
        7,
        "override",
        [40],
    )
    assert (keys["use_cpu"]["source"], keys["dataset"]["source"], keys["dataset"]["argument"]) == ("auto", "yaml", None)
    assert plan["decision"]["device"] == "cpu" and plan["accelerate"]["values"]["use_cpu"] is True
    assert f"cd {plan['workdir']} && " in block and " ".join(plan["command"][-3:]) in block
    assert not output_dir.exists()


def test_overrides_without_a_config_apply_to_the_demo(tmp_path):
    """`docker run IMAGE --bf16 max_steps=10`: the image's entrypoint has no config to name."""
    result = run_cli("--bf16", "--allow-cpu", "max_steps=7", f"output_dir={tmp_path / 'out'}", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "configs/examples/demo.yaml" in result.stdout and "max_steps=7" in result.stdout


def test_an_override_with_a_slash_in_its_value_overrides_the_demo(tmp_path):
    """`docker run IMAGE --bf16 output_dir=outputs/x`: the first free argument is a key=value, not a config."""
    result = run_cli("train", "--bf16", "--allow-cpu", "--dry-run", f"output_dir={tmp_path}/x", "max_steps=3")
    assert result.returncode == 0, result.stderr
    assert f"output {tmp_path}/x" in result.stdout and "configs/examples/demo.yaml" in result.stdout
