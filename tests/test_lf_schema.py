"""LLaMA-Factory's keys checked before loading (lf_schema.py), against the schema built at install time from its own
dataclasses (lf_schema_build.py). LLaMA-Factory's own example YAMLs, from its release's source archive
(scripts/bootstrap unpacks it), are the corpus: each must pass, except keys that are not LLaMA-Factory's."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import pytest
import yaml
from llamafactory_fp8 import contract, lf_schema
from llamafactory_fp8.lf_files import lf_examples_dir, lf_schema_path

from .conftest import ROOT

EXAMPLES = lf_examples_dir()
CORPUS = sorted(
    path.relative_to(EXAMPLES).as_posix()
    for path in [*EXAMPLES.glob("train_*/*.yaml"), *EXAMPLES.glob("extras/**/*.yaml")]
)
NOT_TRAINING_CONFIGS = {
    "extras/multi_tokens/tokens_cfg.yaml": "the token descriptions that new_special_tokens_config points at",
}
# What each example says that LLaMA-Factory 0.9.5 over Transformers 5 refuses too (HfArgumentParser: "Some keys are
# not used"), each for its reason.
EXPECTED = {
    "extras/fp8/llama3_fp8_fsdp_sft.yaml": [
        # a TrainingArguments field of Transformers 4, gone in 5 (LLaMA-Factory 0.9.5 allows both)
        "fsdp_transformer_layer_cls_to_wrap: not a LLaMA-Factory key (Transformers 5 reads it in fsdp_config as "
        "transformer_layer_cls_to_wrap; without either, FSDP wraps the model's own decoder layers, its "
        "_no_split_modules)",
    ],
}
GUIDE_EXAMPLE = (ROOT / "configs" / "examples" / "fp8-guide-qwen2.5-7b.yaml").read_text()


@pytest.fixture(scope="module")
def schema() -> lf_schema.Schema:
    return lf_schema.load_schema()


def problems(schema, **values) -> list[str]:
    return [f"{problem} [{problem.severity}]" for problem in lf_schema.check_keys(values, schema)]


def test_the_corpus_is_llamafactorys_release():
    assert len(CORPUS) >= 35, f"LLaMA-Factory's examples are missing from {EXAMPLES}: run scripts/bootstrap"


@pytest.mark.parametrize("example", [name for name in CORPUS if name not in NOT_TRAINING_CONFIGS])
def test_llamafactorys_own_examples_pass_except_keys_that_are_not_llamafactorys(schema, example):
    values = yaml.safe_load((EXAMPLES / example).read_text())
    assert [str(problem) for problem in lf_schema.check_keys(values, schema)] == EXPECTED.get(example, [])


def test_the_fp8_guides_example_passes(schema):
    assert lf_schema.check_keys(yaml.safe_load(GUIDE_EXAMPLE), schema) == ()


def test_the_installed_schema_is_what_the_installed_llamafactory_builds():
    """scripts/bootstrap and the image build it; a schema left from another install would judge other keys."""
    build = "import json; from llamafactory_fp8.lf_schema_build import build_schema; print(json.dumps(build_schema()))"
    built = subprocess.run([sys.executable, "-c", build], capture_output=True, text=True, timeout=300, check=True)
    assert json.loads(built.stdout.splitlines()[-1]) == json.loads(lf_schema_path().read_text())


def test_a_schema_of_another_release_is_refused_in_one_line(tmp_path):
    written = json.loads(lf_schema_path().read_text())
    (tmp_path / "schema.json").write_text(json.dumps({**written, "llamafactory": "0.0.1"}))
    with pytest.raises(lf_schema.SchemaUnavailable) as refused:
        lf_schema.load_schema({contract.LF_DIR.name: str(tmp_path)})
    installed = importlib.metadata.version("llamafactory")
    assert str(refused.value) == (
        f"{tmp_path}/schema.json describes LLaMA-Factory 0.0.1, but {installed} is installed: "
        "run scripts/bootstrap again"
    )


def test_a_missing_schema_is_refused_in_one_line(tmp_path):
    with pytest.raises(lf_schema.SchemaUnavailable) as refused:
        lf_schema.load_schema({contract.LF_DIR.name: str(tmp_path)})
    assert str(refused.value) == (
        f"LLaMA-Factory's key schema cannot be read: {tmp_path}/schema.json (No such file or directory); "
        "scripts/bootstrap builds it"
    )


# Issue #19, "Checked before loading": each mistake that --dry-run let through, as the launcher hands it over (the
# YAML as PyYAML types it, then key=value overrides, `max_steps=` being an empty text).
@pytest.mark.parametrize(
    ("values", "said"),
    [
        ({"learning_rate": "abc"}, "learning_rate: must be a number, got 'abc' [error]"),
        ({"max_steps": "abc"}, "max_steps: must be an integer, got 'abc' [error]"),
        ({"max_steps": ""}, "max_steps: must be an integer, got an empty value [error]"),
        ({"learnig_rate": 1e-5}, "learnig_rate: not a LLaMA-Factory key (did you mean learning_rate?) [error]"),
        ({"fp8_bakend": "te"}, "fp8_bakend: not a LLaMA-Factory key (did you mean fp8_backend?) [error]"),
        ({"my_own_key": 1}, "my_own_key: not a LLaMA-Factory key [error]"),
        (
            {"fsdp_min_num_params": 1000},  # fuzzy matching alone guessed ddp_find_unused_parameters
            "fsdp_min_num_params: not a LLaMA-Factory key (Transformers 5 reads it in fsdp_config as min_num_params) "
            "[error]",
        ),
        (
            {"max_steps": -5},
            "max_steps: -5 sets no step limit: Transformers trains num_train_epochs (3.0) instead [warning]",
        ),
        (
            {"max_steps": 0, "num_train_epochs": 2},
            "max_steps: 0 sets no step limit: Transformers trains num_train_epochs (2) instead [warning]",
        ),
        ({"stage": "ppo2"}, "stage: must be one of pt, sft, rm, ppo, dpo, kto, got 'ppo2' (did you mean ppo?) [error]"),
        (
            {"flash_attn": "fa4"},
            "flash_attn: must be one of auto, disabled, sdpa, fa2, fa3, got 'fa4' (did you mean fa3?) [error]",
        ),
        ({"bf16": "false"}, "bf16: must be true or false, got 'false' [error]"),
        ({"quantization_bit": "4"}, "quantization_bit: must be an integer or null, got '4' [error]"),
        ({"report_to": 3}, "report_to: must be text or a list or null, got 3 [error]"),
        ({"per_device_train_batch_size": 2.5}, "per_device_train_batch_size: must be an integer, got 2.5 [error]"),
    ],
)
def test_each_mistake_is_one_line_naming_the_key(schema, values, said):
    assert problems(schema, **values) == [said]


def test_a_template_llamafactory_does_not_register_is_an_error_before_the_tokenizer_loads(schema):
    """LLaMA-Factory looks `template` up only after loading the tokenizer, then raises: its registry is in the schema,
    listed in part (it holds over a hundred)."""
    (said,) = problems(schema, template="qwen4")
    assert said.startswith("template: must be one of ") and " names (" in said and ", ...), got 'qwen4'" in said
    assert problems(schema, template="qwen3") == problems(schema, template="llama3") == []


def test_lr_scheduler_choices_come_from_transformers_enum(schema):
    (said,) = problems(schema, lr_scheduler_type="cosin")
    assert said.startswith("lr_scheduler_type: must be one of linear, cosine, ")
    assert said.endswith(", got 'cosin' (did you mean cosine?) [error]")


@pytest.mark.parametrize(
    "values",
    [
        {"learning_rate": "1e-5"},  # PyYAML's text, OmegaConf's (and so LLaMA-Factory's) float
        {"learning_rate": "5E+3"},
        {"learning_rate": 1.0e-5},
        {"num_train_epochs": 3},  # an integer where a number is wanted
        {"max_steps": -1},  # Transformers' own "no limit", said by nobody but the default
        {"run_name": yaml.safe_load("2024-01-01")},  # a date to PyYAML, text to OmegaConf
        {"resume_from_checkpoint": None},
        {"report_to": ["tensorboard", "wandb"]},
        {"deepspeed": {"zero_optimization": {"stage": 3}}},
        {"ddp_backend": "gloo"},
    ],
)
def test_what_llamafactory_accepts_passes(schema, values):
    assert problems(schema, **values) == []


@pytest.mark.parametrize(("key", "low", "high"), [(key, low, high) for key, (low, high) in lf_schema.RANGES.items()])
def test_values_outside_the_obvious_range_are_errors(schema, key, low, high):
    below = low - 1 if isinstance(low, int) and low > 0 else low - 0.5
    assert problems(schema, **{key: below}) == [
        f"{key}: must be {f'between {low} and {high}' if high is not None else f'at least {low}'}, got {below} [error]"
    ]
    assert problems(schema, **{key: low}) == []
    if high is not None:
        assert problems(schema, **{key: high + 0.5})[0].startswith(f"{key}: must be between")


def test_nan_is_out_of_every_range(schema):
    assert problems(schema, learning_rate=float("nan")) == ["learning_rate: must be at least 0, got .nan [error]"]


def test_a_check_takes_milliseconds_and_imports_neither_torch_nor_transformers():
    probe = f"""
import sys, time, yaml
started = time.perf_counter()
from llamafactory_fp8.lf_schema import check_keys, load_schema
problems = check_keys(yaml.safe_load({GUIDE_EXAMPLE!r}), load_schema())
print(time.perf_counter() - started, len(problems), sorted(m for m in ("torch", "transformers") if m in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=ROOT)
    seconds, count, heavy = result.stdout.split(maxsplit=2)
    assert (count, heavy.strip()) == ("0", "[]"), result.stderr
    assert float(seconds) < 0.5
