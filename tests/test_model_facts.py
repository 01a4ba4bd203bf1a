"""Knowing the model before deciding: config.json alone, fetched through huggingface_hub from a Hub that a tiny
server on loopback plays (the `resolve` route with the headers huggingface_hub needs, 401 for a gated model
without access, 404 for a missing one), with HF_ENDPOINT pointing at it."""

import importlib.util
import json

import pytest
from llamafactory_fp8.model_facts import estimate_parameters

from .conftest import BENCH_MODELS, model_dir, run_cli
from .loopback_hub import LoopbackHub, serving

MY_MODEL = "configs/examples/my_model.yaml"  # meta-llama/Llama-3.1-8B-Instruct, full fine-tuning
GATED = "meta-llama/Llama-3.1-8B-Instruct"
OPEN = "Qwen/Qwen2.5-7B-Instruct"
GRANTED_TOKEN = "hf_granted"
CONFIGS = {GATED: BENCH_MODELS / "llama-3.1-8b" / "config.json", OPEN: BENCH_MODELS / "qwen2.5-7b" / "config.json"}


class FakeHub(LoopbackHub):
    configs = {repo: path.read_bytes() for repo, path in CONFIGS.items()}
    gated = {GATED: GRANTED_TOKEN}


@pytest.fixture
def hub():
    with serving(FakeHub) as endpoint:
        yield endpoint


def dry_run(tmp_path, endpoint, *args, profile="h100-sxm-x8", **env):
    environment = {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_TOKEN": "",
        "HF_HUB_OFFLINE": "0",
        **env,
    }
    return run_cli(
        "train", MY_MODEL, "--dry-run", f"output_dir={tmp_path / 'out'}", *args, profile=profile, **environment
    )


def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "accelerate.commands.launch" not in result.stdout, "nothing may launch"
    return lines[0]


def test_the_shipped_example_gets_fp8_under_fsdp2_on_eight_h100s_once_its_config_json_is_fetched(tmp_path, hub):
    """Its micro-batch, 2 x 2048, is where FP8 was measured faster than BF16 under FSDP2: the block says so."""
    result = dry_run(tmp_path, hub, HF_TOKEN=GRANTED_TOKEN)
    assert result.returncode == 0, result.stderr
    assert f"~8.03B parameters (config.json from the Hugging Face Hub ({hub}, revision main))" in result.stdout
    assert "FP8 (torchao) on cuda, 8 processes" in result.stdout
    assert "FP8 under DeepSpeed ZeRO-2: measured faster than BF16 from 4096 tokens per micro-batch" in result.stdout
    assert FakeHub.requests and all(path == f"/{GATED}/resolve/main/config.json" for path in FakeHub.requests), (
        "config.json alone"
    )


def test_the_shipped_example_at_one_sequence_per_gpu_trains_in_bf16_and_says_why(tmp_path, hub):
    result = dry_run(tmp_path, hub, "per_device_train_batch_size=1", HF_TOKEN=GRANTED_TOKEN)
    assert result.returncode == 0, result.stderr
    assert "BF16 on cuda, 8 processes" in result.stdout
    assert (
        "BF16 because under DeepSpeed ZeRO-2 FP8 was measured faster than BF16 only from 4096 tokens per micro-batch, "
        "and this run's is at most 1 x 2048"
    ) in result.stdout


@pytest.mark.parametrize("token", ["", "hf_not_granted"], ids=["no token (401)", "a token without access (403)"])
def test_a_gated_model_without_access_is_one_line_naming_the_license_page_and_hf_token(tmp_path, hub, token):
    result = dry_run(tmp_path, hub, HF_TOKEN=token)
    assert result.returncode == 17
    line = one_error_line(result)
    assert f"{hub}/{GATED}" in line and "HF_TOKEN" in line


def test_a_missing_model_is_one_line(tmp_path, hub):
    result = dry_run(tmp_path, hub, "model_name_or_path=nobody/no-such-model")
    assert result.returncode == 18
    assert "model not found" in one_error_line(result) and "nobody/no-such-model" in result.stderr


def test_the_yamls_revision_is_the_one_fetched(tmp_path, hub):
    result = dry_run(tmp_path, hub, f"model_name_or_path={OPEN}", "model_revision=v2.1")
    assert result.returncode == 0, result.stderr
    assert FakeHub.requests[0] == f"/{OPEN}/resolve/v2.1/config.json"
    assert "revision v2.1" in result.stdout


def test_offline_a_model_not_in_the_cache_is_refused_and_one_in_it_is_used(tmp_path, hub):
    offline = dry_run(tmp_path, hub, f"model_name_or_path={OPEN}", HF_HUB_OFFLINE="1")
    assert offline.returncode == 18, offline.stderr
    assert not FakeHub.requests
    assert "is not in the Hugging Face cache and HF_HUB_OFFLINE is set" in one_error_line(offline)

    assert dry_run(tmp_path, hub, f"model_name_or_path={OPEN}").returncode == 0  # fills the cache
    cached = dry_run(tmp_path, hub, f"model_name_or_path={OPEN}", HF_HUB_OFFLINE="1")
    assert "config.json from the Hugging Face cache; offline (HF_HUB_OFFLINE)" in cached.stdout


def test_an_unreachable_hub_is_offline_not_an_error(tmp_path):
    result = dry_run(tmp_path, "http://127.0.0.1:9", f"model_name_or_path={OPEN}")  # the discard port: refused
    assert result.returncode == 0, result.stderr
    assert "size unknown: offline: http://127.0.0.1:9 could not be reached (ConnectError)" in result.stdout
    assert result.stdout.count("could not be reached") == 1  # the block says the cause once, on the model line


def test_modelscope_without_its_package_is_one_line(tmp_path, hub):
    if importlib.util.find_spec("modelscope"):
        pytest.skip("modelscope is installed here; this is the path of users without it")
    result = dry_run(tmp_path, hub, f"model_name_or_path={OPEN}", USE_MODELSCOPE_HUB="1")
    assert result.returncode == 18
    assert "the modelscope package is not installed" in one_error_line(result)
    assert not FakeHub.requests, "ModelScope ids are not looked up on the Hugging Face Hub"


def test_parameter_counts_of_the_shapes_in_the_repo():
    """Against the sizes their model cards give."""
    expected = {
        "qwen2.5-0.5b": 0.494,
        "llama-3.2-1b": 1.24,
        "qwen2.5-3b": 3.09,
        "qwen2.5-7b": 7.62,
        "llama-3.1-8b": 8.03,
        "llama-3.1-70b": 70.6,
        "llama-3.1-405b": 405.9,
    }
    for name, billions in expected.items():
        config = json.loads((model_dir(name) / "config.json").read_text())
        assert estimate_parameters(config) / 1e9 == pytest.approx(billions, rel=0.01), name


@pytest.mark.parametrize("name", ["qwen2.5-0.5b", "qwen2.5-7b", "llama-3.2-1b", "llama-3.1-8b"])
@pytest.mark.parametrize("attention_bias", [False, True])
def test_parameter_counts_equal_transformers_own(name, attention_bias):
    """Exactly, biases included (Qwen2 always biases q, k and v): a rehearsal's report counts the built model, and
    its replay finds the shape by this count. Built on the meta device, two layers deep, so nothing is allocated."""
    import torch
    import transformers

    config = json.loads((model_dir(name) / "config.json").read_text())
    config = {**config, "num_hidden_layers": 2, "attention_bias": attention_bias}
    model_config = transformers.AutoConfig.for_model(**config)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(model_config)
    assert estimate_parameters(config) == sum(p.numel() for p in model.parameters())
