"""LLaMA-Factory's own training examples, shrunk and run on the CPU through the real launcher, Accelerate and
LLaMA-Factory: each keeps its stage, template, dataset and fine-tuning type; the tiny demo model (whose tokenizer
holds the chat templates' markers) stands in for its model, and it trains two steps. What cannot run here is
refused before anything loads."""

import json

import pytest
from llamafactory_fp8.demo import build_demo_model
from llamafactory_fp8.lf_files import lf_examples_dir

from .conftest import ROOT, run_cli

EXAMPLES = lf_examples_dir()
SHRUNK = (
    "max_steps=2",
    "save_steps=1000",
    "per_device_train_batch_size=2",
    "gradient_accumulation_steps=1",
    "cutoff_len=64",
    "max_samples=16",
    "preprocessing_num_workers=1",
    "dataloader_num_workers=0",
    "report_to=none",
    "plot_loss=false",
)
# The full example names DeepSpeed ZeRO-3 (examples/deepspeed/ds_z3_config.json): on the CPU it needs --processes 2
# and builds DeepSpeed's C++ ops on its first run (minutes here; tests/test_sharded_cpu.py runs ZeRO-3), so this run
# takes data parallel instead, as a user would with --strategy ddp.
FLAGS = {"train_full/qwen3_full_sft.yaml": ("--strategy", "ddp")}
RUNS = {  # example: what its stage saves
    "train_full/qwen3_full_sft.yaml": "model.safetensors",
    "train_lora/qwen3_lora_sft.yaml": "adapter_model.safetensors",
    "train_lora/qwen3_lora_pretrain.yaml": "adapter_model.safetensors",
    "train_lora/qwen3_lora_dpo.yaml": "adapter_model.safetensors",
    "train_lora/qwen3_lora_kto.yaml": "adapter_model.safetensors",
    "train_lora/qwen3_lora_reward.yaml": "adapter_model.safetensors",
}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_demo_model(tmp_path_factory.mktemp("model") / "tiny-llama", ROOT / "data")


@pytest.mark.slow
@pytest.mark.parametrize("example", list(RUNS))
def test_the_example_trains_two_steps_as_written(example, tiny_model, tmp_path):
    output_dir = tmp_path / "saves"
    result = run_cli(
        "train",
        str(EXAMPLES / example),
        "--allow-cpu",
        f"model_name_or_path={tiny_model}",
        f"output_dir={output_dir}",
        *SHRUNK,
        *FLAGS.get(example, ()),
        cwd=EXAMPLES.parent,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 2
    assert (output_dir / RUNS[example]).stat().st_size > 0
    assert "llamafactory-fp8: finished: 2 steps" in result.stdout


def test_qlora_off_a_gpu_is_refused_before_loading(tiny_model, tmp_path):
    result = run_cli(
        "train",
        str(EXAMPLES / "train_qlora/qwen3_lora_sft_otfq.yaml"),
        "--allow-cpu",
        f"model_name_or_path={tiny_model}",
        f"output_dir={tmp_path / 'saves'}",
        *SHRUNK,
        cwd=EXAMPLES.parent,
    )
    assert result.returncode == 25 and "bitsandbytes" in result.stderr


@pytest.mark.slow
def test_an_example_trains_the_steps_its_epochs_over_max_samples_bound(tiny_model, tmp_path):
    """The run length auto weighs FP8's longer start against (training_config.py), against the steps Transformers
    takes: LLaMA-Factory's LoRA example over two datasets, max_samples from each, two epochs, no max_steps."""
    from llamafactory_fp8.training_config import load_training_config

    example = EXAMPLES / "train_lora/qwen3_lora_sft.yaml"
    output_dir = tmp_path / "saves"
    keys = [k for k in SHRUNK if not k.startswith(("max_steps=", "max_samples="))]
    keys += ["max_samples=3", "num_train_epochs=2", "gradient_accumulation_steps=2"]
    result = run_cli(
        "train",
        str(example),
        "--allow-cpu",
        f"model_name_or_path={tiny_model}",
        f"output_dir={output_dir}",
        *keys,
        cwd=EXAMPLES.parent,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    trained = json.loads((output_dir / "trainer_state.json").read_text())["global_step"]
    length = load_training_config(example, keys).run_length(world=1)
    # 6 examples in micro-batches of 2: 3 a epoch, 2 optimizer steps (the second accumulates one), 4 in all
    assert trained == 4 and length.micro_batches == trained * 2


@pytest.mark.slow
def test_the_evaluation_example_evaluates_the_trained_adapter_and_again_on_a_rerun(tiny_model, tmp_path):
    """LLaMA-Factory's nlg_eval example after its LoRA example, as its README chains them, evaluating the loss
    (generating needs the scorers this image leaves out): BF16, a rerun evaluates again rather than resuming."""
    adapter = tmp_path / "saves" / "sft"
    trained = run_cli(
        "train",
        str(EXAMPLES / "train_lora/qwen3_lora_sft.yaml"),
        "--allow-cpu",
        f"model_name_or_path={tiny_model}",
        f"output_dir={adapter}",
        *SHRUNK,
        cwd=EXAMPLES.parent,
    )
    assert trained.returncode == 0, trained.stderr[-4000:]
    evaluation = tmp_path / "saves" / "eval"
    keys = ("do_predict=false", "do_eval=true", "predict_with_generate=false", "cutoff_len=64", "max_samples=2")
    for _ in range(2):
        result = run_cli(
            "train",
            str(EXAMPLES / "extras/nlg_eval/llama3_lora_predict.yaml"),
            "--allow-cpu",
            f"model_name_or_path={tiny_model}",
            f"adapter_name_or_path={adapter}",
            f"output_dir={evaluation}",
            *keys,
            "preprocessing_num_workers=1",
            "dataloader_num_workers=0",
            cwd=EXAMPLES.parent,
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
        assert "eval_loss" in json.loads((evaluation / "eval_results.json").read_text())
        assert result.stdout.strip().endswith(f"llamafactory-fp8: finished: results in {evaluation}")


@pytest.mark.slow
def test_what_llamafactorys_own_argument_checks_refuse_is_one_line_and_exit_13(tiny_model, tmp_path):
    """The nlg_eval example predicting without generating: a rule across keys that no key's schema holds, which
    LLaMA-Factory's parser raises in each rank before the model loads."""
    result = run_cli(
        "train",
        str(EXAMPLES / "extras/nlg_eval/llama3_lora_predict.yaml"),
        "--allow-cpu",
        f"model_name_or_path={tiny_model}",
        "adapter_name_or_path=null",
        f"output_dir={tmp_path / 'predict'}",
        "predict_with_generate=false",
        cwd=EXAMPLES.parent,
    )
    assert result.returncode == 13, result.stdout[-2000:] + result.stderr[-4000:]
    assert "Traceback" not in result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("llamafactory-fp8: error: LLaMA-Factory refused the training config: Please enable")


@pytest.mark.slow
@pytest.mark.parametrize(
    "key, said",
    [
        ("lora_target=q_proj,v_porj", "lora_target: v_porj (did you mean v_proj?) is the name of no module in"),
        ("additional_target=embed_tokenz", "additional_target: embed_tokenz (did you mean embed_tokens?) is the name"),
    ],
)
def test_a_target_that_names_no_module_is_refused_before_the_weights_load(tiny_model, tmp_path, key, said):
    """PEFT would pass over v_porj beside q_proj and train q_proj alone (and raise only once the weights had loaded
    where no name matched), and pass over a module to save that matches nothing: each rank checks the names against
    the model built on the meta device first."""
    output_dir = tmp_path / "saves"
    result = run_cli(
        "train",
        str(EXAMPLES / "train_lora/qwen3_lora_sft.yaml"),
        "--allow-cpu",
        f"model_name_or_path={tiny_model}",
        f"output_dir={output_dir}",
        key,
        *SHRUNK,
        cwd=EXAMPLES.parent,
    )
    assert result.returncode == 13, result.stdout[-2000:] + result.stderr[-4000:]
    assert "Traceback" not in result.stdout + result.stderr
    assert "trainable params" not in result.stdout + result.stderr  # LLaMA-Factory's line once the adapter is built
    assert said in result.stderr.strip().splitlines()[-1]
    assert not list(output_dir.glob("checkpoint-*")) and not (output_dir / "adapter_model.safetensors").exists()
