"""Whatever the YAML and the command line hold, the launcher answers with a plan or one line and a documented
exit code, never a traceback: random YAML mappings, random key=value overrides and flags, through `main()` itself
with `--dry-run`, on every recorded GPU profile."""

import contextlib
import io

import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from llamafactory_fp8.cli import main
from llamafactory_fp8.errors import documented_exit_codes

from .conftest import PROFILES, model_dir

# The keys the launcher reads, and a few it passes through untouched.
KEYS = (
    "model_name_or_path",
    "output_dir",
    "do_train",
    "do_eval",
    "do_predict",
    "stage",
    "finetuning_type",
    "quantization_bit",
    "lora_rank",
    "lora_target",
    "freeze_trainable_layers",
    "per_device_train_batch_size",
    "cutoff_len",
    "gradient_accumulation_steps",
    "disable_gradient_checkpointing",
    "torch_compile",
    "optim",
    "pure_bf16",
    "enable_liger_kernel",
    "fp8",
    "fp8_backend",
    "fp16",
    "bf16",
    "deepspeed",
    "fsdp",
    "fsdp_config",
    "resume_from_checkpoint",
    "model_revision",
    "hf_hub_token",
    "cache_dir",
    "dataset_dir",
    "learning_rate",
    "overwrite_output_dir",
    "max_steps",
    "num_train_epochs",
    "max_samples",
    "dataset",
)
MODELS = [str(model_dir(name)) for name in ("qwen2.5-0.5b", "llama-3.1-8b", "llama-3.1-70b")]
FLAGS = (
    "--fp8",
    "--bf16",
    "--auto",
    "--backend",
    "te",
    "torchao",
    "--strategy",
    "fsdp2",
    "deepspeed-zero3",
    "ddp",
    "fsdp2-offload",
    "--no-memory-check",
    "--allow-cpu",
    "--json",
    "--unknown",
    "auto",
    "--fp8-recipe",
    "lora-base",
    "rowwise",
    "default",
)

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(10**6), 10**13), st.floats(), st.text(max_size=12))
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=5,
)
# Values a user would write for each key, so that most examples get past the YAML checks to the decision.
PLAUSIBLE = {
    "model_name_or_path": st.sampled_from([*MODELS, "org/not-cached", "/no/such/folder"]),
    "output_dir": st.sampled_from(["out", "nested/out", "/"]),
    "stage": st.sampled_from(["pt", "sft", "dpo", "kto", "rm", "ppo"]),
    "finetuning_type": st.sampled_from(["full", "freeze", "lora", "oft"]),
    "quantization_bit": st.sampled_from([None, 4, 8]),
    "lora_rank": st.integers(1, 1024),
    "lora_target": st.sampled_from(["all", "q_proj,v_proj", "c_attn"]),
    "freeze_trainable_layers": st.integers(-200, 200),
    "per_device_train_batch_size": st.integers(1, 64),
    "cutoff_len": st.integers(1, 131072),
    "gradient_accumulation_steps": st.integers(1, 64),
    "optim": st.sampled_from(["adamw_torch", "adamw_8bit", "sgd", "adafactor", "lion_32bit", "galore_adamw"]),
    "fp8_backend": st.sampled_from(["auto", "torchao", "te", "msamp"]),
    "deepspeed": st.sampled_from(["missing.json", {"zero_optimization": {"stage": 3}}, {"zero_optimization": [1]}]),
    "fsdp": st.sampled_from(["full_shard auto_wrap", ["shard_grad_op"], "offload full_shard", ""]),
    "fsdp_config": st.sampled_from([{"fsdp_version": 2}, "fsdp.json"]),
    # the run's length, which auto weighs FP8's longer start against
    "max_steps": st.integers(-2, 10**7),
    "num_train_epochs": st.floats(0, 100) | st.integers(0, 100),
    "max_samples": st.none() | st.integers(0, 10**6),
    "dataset": st.sampled_from(["identity", "identity,alpaca_en_demo", ["alpaca_en_demo"], "nope"]),
}
PLAUSIBLE.update(
    {
        key: st.booleans()
        for key in (
            "disable_gradient_checkpointing",
            "torch_compile",
            "pure_bf16",
            "enable_liger_kernel",
            "fp8",
            "fp16",
            "bf16",
            "do_train",
            "do_eval",
            "do_predict",
        )
    }
)
names = st.sampled_from(KEYS) | st.text(min_size=1, max_size=10)


def mostly(plausible, other=values):
    """Nine in ten draws plausible, the rest anything."""
    return st.integers(0, 9).flatmap(lambda draw: other if draw == 0 else plausible)


entries = st.sampled_from(KEYS).flatmap(lambda key: st.tuples(st.just(key), mostly(PLAUSIBLE.get(key, values))))
mappings = st.builds(
    lambda entries, model, output, trains: {
        "do_train": trains,
        **dict(entries),
        "model_name_or_path": model,
        "output_dir": output,
    },
    st.lists(entries | st.tuples(names, values), max_size=8),
    mostly(PLAUSIBLE["model_name_or_path"]),
    mostly(PLAUSIBLE["output_dir"]),
    mostly(st.just(True), PLAUSIBLE["do_train"]),
)
documents = mostly(mappings.map(lambda mapping: yaml.safe_dump(mapping, allow_unicode=True)), st.text(max_size=40))
overrides = st.lists(
    mostly(
        entries.map(
            lambda entry: (
                f"{entry[0]}={yaml.safe_dump(entry[1], default_flow_style=True).strip().removesuffix('...').strip()}"
            )
        ),
        st.builds("{}={}".format, names, st.text(max_size=12)) | st.text(max_size=10),
    ),
    max_size=4,
)
flags = st.lists(st.sampled_from(FLAGS), max_size=4)
profiles = st.sampled_from(sorted(path.stem for path in PROFILES.glob("*.json")))


@settings(
    max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(document=documents, override=overrides, flag=flags, profile=profiles)
def test_random_yaml_and_overrides_get_a_plan_or_one_line_never_a_traceback(
    tmp_path, monkeypatch, nvml_profile, document, override, flag, profile
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # no Hub: the discard port refuses at once
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    for name in ("NNODES", "USE_MODELSCOPE_HUB"):
        monkeypatch.delenv(name, raising=False)
    nvml_profile(profile)
    (tmp_path / "train.yaml").write_text(document)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(["train", "train.yaml", *override, *flag, "--dry-run"])
        except SystemExit as exit:  # argparse's usage errors and --help
            code = exit.code
    event(f"exit {code}")  # pytest --hypothesis-show-statistics shows how the examples spread over the outcomes
    assert code in documented_exit_codes(), (code, stderr.getvalue())
    assert "Traceback" not in stdout.getvalue() + stderr.getvalue()
    if code != 0:
        assert len(stderr.getvalue().strip().splitlines()) == 1, stderr.getvalue()
