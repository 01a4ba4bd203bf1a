"""Bad input: one line on stderr, a distinct non-zero exit code, never a traceback, never a different run."""

import json
import time

import pytest

from .conftest import ROOT, model_dir, run_cli

DEMO = str(ROOT / "configs" / "examples" / "demo.yaml")


def _write(name, text):
    """An argument builder: the path of a file with `text`, written into the test's tmp_path."""

    def build(tmp_path):
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    return build


def _not_writable_output(tmp_path):
    (tmp_path / "a-file").write_text("")
    return f"output_dir={tmp_path / 'a-file'}/out"


def _missing(tmp_path):
    return str(tmp_path / "nope.yaml")


def _users_data(name, content):
    """A dataset_dir holding one dataset of the user's, `mine`, whose file holds `content` (None: no file)."""

    def build(tmp_path):
        data = tmp_path / "data"
        data.mkdir(exist_ok=True)
        (data / "dataset_info.json").write_text(json.dumps({"mine": {"file_name": name}}))
        if content is not None:
            (data / name).write_text(content)
        return f"dataset_dir={data}"

    return build


def _model_folder_without_config(tmp_path):
    (tmp_path / "empty-model").mkdir()
    return f"model_name_or_path={tmp_path / 'empty-model'}"


def _folder_that_is_no_adapter(tmp_path):
    (tmp_path / "saves" / "sft").mkdir(parents=True)
    return f"adapter_name_or_path={tmp_path / 'saves' / 'sft'}"


MINE = "dataset=mine"
USERS = _write(
    "users.yaml", "model_name_or_path: nobody/set-below\ndo_train: true\ndataset: alpaca_en_demo\noutput_dir: out\n"
)
# name: (arguments, each a string or a builder of tmp_path; NVML profile; exit code; words in the one line[; env])
BAD_INPUTS = {
    "missing config": (["train", _missing], "h100-sxm", 10, "not found"),
    "unparsable YAML": (["train", _write("bad.yaml", "model: [unclosed\n")], "h100-sxm", 11, "not valid YAML (line"),
    "not a mapping": (["train", _write("list.yaml", "- a\n- b\n")], "h100-sxm", 12, "mapping"),
    "unknown precision flag": (["train", DEMO, "--fp4"], "h100-sxm", 64, "unrecognized arguments: --fp4"),
    "fp8 forced on A100": (["train", DEMO, "--fp8"], "a100", 2, "FP8 refused"),
    "no GPU": (["train", DEMO], "no-gpu", 3, "--gpus all"),
    "fp8 forced without a GPU": (["train", DEMO, "--fp8"], "no-gpu", 2, "FP8 refused: it needs a GPU"),
    "output dir not writable": (["train", DEMO, "--allow-cpu", _not_writable_output], "no-gpu", 14, "not writable"),
    "no model": (["train", _write("nomodel.yaml", "output_dir: out\n")], "h100-sxm", 13, "model_name_or_path"),
    "a config that does nothing": (
        ["train", _write("nothing.yaml", "model_name_or_path: m\noutput_dir: out\n")],
        "h100-sxm",
        13,
        "set do_train: true",
    ),
    "malformed override": (["train", DEMO, "novalue"], "h100-sxm", 13, "key=value"),
    "NUL in a path": (
        ["train", _write("nul.yaml", 'model_name_or_path: m\ndo_train: true\noutput_dir: "\\0"\n')],
        "a100",
        13,
        "NUL",
    ),
    "FP8 recipe on a BF16 run": (
        ["train", DEMO, "--bf16", "--fp8-recipe", "rowwise"],
        "h100-sxm",
        13,
        "--fp8-recipe rowwise",
    ),
    "FP8 recipe on the CPU": (["train", DEMO, "--allow-cpu", "--fp8-recipe", "lora-base"], "no-gpu", 13, "no FP8"),
    "unknown backend": (["train", DEMO, "--backend", "msamp"], "h100-sxm", 64, "invalid choice"),
    "bf16 forced on T4": (["train", DEMO, "--bf16"], "t4", 4, "BF16 refused"),
    "NNODES without MASTER_ADDR": (["train", DEMO, "--dry-run"], "h100-sxm", 16, "MASTER_ADDR"),
    "no such model folder": (
        ["train", _write("folder.yaml", "model_name_or_path: /no/such/model\ndo_train: true\noutput_dir: out\n")],
        "h100-sxm",
        18,
        "is not a folder",
    ),
    "a value of the wrong type": (["train", DEMO, "learning_rate=abc"], "h100-sxm", 13, "learning_rate"),
    "max_steps=abc": (["train", DEMO, "max_steps=abc"], "h100-sxm", 13, "max_steps"),
    "max_steps=": (["train", DEMO, "max_steps="], "h100-sxm", 13, "max_steps"),
    # the run's length is read to weigh FP8's longer start: a value no length follows from is refused there
    "num_train_epochs=inf": (["train", DEMO, "num_train_epochs=.inf"], "h100-sxm", 13, "num_train_epochs"),
    "max_samples=0": (["train", DEMO, "max_samples=0"], "h100-sxm", 13, "max_samples"),
    "an unknown key": (["train", DEMO, "learnig_rate=1e-5"], "h100-sxm", 13, "did you mean learning_rate"),
    "a dataset no dataset_info.json names": (["train", DEMO, "dataset=nope"], "h100-sxm", 26, "nope is not in"),
    "a broken dataset file": (["train", DEMO, _users_data("m.json", "[{"), MINE], "h100-sxm", 26, "not valid JSON"),
    "an empty dataset file": (["train", DEMO, _users_data("m.json", ""), MINE], "h100-sxm", 26, "is empty"),
    "a missing dataset file": (["train", DEMO, _users_data("m.json", None), MINE], "h100-sxm", 26, "does not exist"),
    "conversations read as alpaca": (
        [
            "train",
            DEMO,
            _users_data("m.json", json.dumps([{"conversations": [{"from": "human", "value": "hi"}]}])),
            MINE,
        ],
        "h100-sxm",
        26,
        'add "formatting": "sharegpt"',
    ),
    "alpaca records without input": (
        ["train", DEMO, _users_data("m.json", json.dumps([{"instruction": "hi", "output": "hello"}])), MINE],
        "h100-sxm",
        26,
        "has no 'input' in any record",
    ),
    "a missing dataset_dir": (["train", DEMO, "dataset_dir=/no/such/data"], "h100-sxm", 26, "is not a folder"),
    "a missing deepspeed file": (["train", DEMO, "deepspeed=/missing.json"], "h100-sxm", 13, "/missing.json"),
    "a model folder without config.json": (
        ["train", USERS, _model_folder_without_config, "--dry-run"],
        "h100-sxm",
        18,
        "has no config.json",
    ),
    # LLaMA-Factory loads adapters once the model's weights have loaded
    "no such adapter folder": (
        ["train", DEMO, "adapter_name_or_path=saves/qwen3/lora/sft"],
        "h100-sxm",
        18,
        "adapter not found",
    ),
    "an adapter folder without adapter_config.json": (
        ["train", DEMO, _folder_that_is_no_adapter, "--dry-run"],
        "h100-sxm",
        18,
        "has no adapter_config.json",
    ),
    "a model path that is no Hub id": (
        ["train", USERS, "model_name_or_path=models/llama/8b"],
        "h100-sxm",
        18,
        "a folder",
    ),
    "a Hub model not cached, offline": (
        ["train", USERS, "model_name_or_path=nobody/not-cached", "--dry-run"],
        "h100-sxm",
        18,
        "HF_HUB_OFFLINE is set",
        {"HF_HUB_OFFLINE": "1"},
    ),
    "7B full fine-tuning on a MIG slice": (
        [
            "train",
            _write(
                "big.yaml",
                f"model_name_or_path: {model_dir('qwen2.5-7b')}\ndo_train: true\n"
                "finetuning_type: full\noutput_dir: out\n",
            ),
        ],
        "h100-mig-1g10gb",
        20,
        "does not fit",
    ),
}
# The issue's list: each of these has an exit code of its own.
ISSUE_CASES = (
    "missing config",
    "unparsable YAML",
    "not a mapping",
    "unknown precision flag",
    "fp8 forced on A100",
    "no GPU",
    "output dir not writable",
)


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_its_own_exit_code(tmp_path, case):
    arguments, profile, exit_code, words, *env = BAD_INPUTS[case]
    args = [arg(tmp_path) if callable(arg) else arg for arg in arguments]
    extra = {"NNODES": "2", "NODE_RANK": "0"} if "NNODES" in case else {}
    extra.update(*env)
    result = run_cli(*args, profile=profile, **extra)
    assert result.returncode == exit_code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert words in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert "accelerate.commands.launch" not in result.stdout, "nothing may launch"


def test_exit_codes_are_distinct():
    codes = [BAD_INPUTS[case][2] for case in ISSUE_CASES]
    assert len(codes) == len(set(codes))


@pytest.mark.parametrize(
    "setting, value",
    [
        ("LLAMAFACTORY_FP8_STALL_AFTER_S", "nan"),
        ("LLAMAFACTORY_FP8_STARTUP_GRACE_S", "abc"),
        ("LLAMAFACTORY_FP8_SAVE_LIMIT_S", "-5"),
        ("LLAMAFACTORY_FP8_STALL_AFTER_S", "inf"),
        ("NNODES", "abc"),
        ("MASTER_PORT", "70000"),
    ],
)
def test_a_setting_the_launcher_cannot_use_is_one_line_and_exit_19_before_anything_loads(setting, value):
    result = run_cli("train", DEMO, "--dry-run", profile="h100-sxm", **{setting: value})
    assert result.returncode == 19, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert f"{setting}={value!r}" in line
    assert "Traceback" not in result.stderr + result.stdout and "accelerate" not in result.stdout


def test_a_mistake_is_found_in_under_two_seconds(tmp_path):
    """The point of finding them before loading: a 70B on 8 GPUs takes minutes to get as far as LLaMA-Factory's own
    check. The fastest of three runs, so that another process on the machine does not decide it."""
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        result = run_cli("train", DEMO, "learning_rate=abc", "--dry-run", profile="h100-sxm")
        timings.append(time.perf_counter() - started)
        assert result.returncode == 13
    assert min(timings) < 2.0, timings


def test_max_steps_below_zero_runs_and_says_what_it_means(tmp_path):
    result = run_cli("train", DEMO, "max_steps=-5", "--dry-run", "--allow-cpu", profile="no-gpu")
    assert result.returncode == 0, result.stderr
    assert "max_steps" in result.stderr and "num_train_epochs" in result.stderr


@pytest.mark.parametrize(
    "entry",
    [
        {"file_name": "m.json", "formatting": "sharegpt"},
        {"file_name": "m.json", "columns": {"prompt": "instruction", "response": "output"}},
    ],
)
def test_a_dataset_entry_fixed_as_the_line_says_plans(tmp_path, entry):
    """What the two column refusals tell the user to write into dataset_info.json plans."""
    data = tmp_path / "data"
    data.mkdir()
    records = {"sharegpt": [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "ho"}]}]}
    (data / "m.json").write_text(
        json.dumps(records.get(entry.get("formatting"), [{"instruction": "hi", "output": "ho"}]))
    )
    (data / "dataset_info.json").write_text(json.dumps({"mine": entry}))
    result = run_cli("train", DEMO, f"dataset_dir={data}", MINE, "--dry-run", profile="h100-sxm")
    assert result.returncode == 0, result.stderr
