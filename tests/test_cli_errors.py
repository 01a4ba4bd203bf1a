"""Bad input: one line on stderr, a distinct non-zero exit code, never a traceback, never a different run."""

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


# name: (arguments, each a string or a builder of tmp_path; NVML profile; exit code; words in the one line)
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
    "malformed override": (["train", DEMO, "novalue"], "h100-sxm", 13, "key=value"),
    "NUL in a path": (["train", _write("nul.yaml", 'model_name_or_path: m\noutput_dir: "\\0"\n')], "a100", 13, "NUL"),
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
        ["train", _write("folder.yaml", "model_name_or_path: /no/such/model\noutput_dir: out\n")],
        "h100-sxm",
        18,
        "is not a folder",
    ),
    "7B full fine-tuning on a MIG slice": (
        [
            "train",
            _write(
                "big.yaml", f"model_name_or_path: {model_dir('qwen2.5-7b')}\nfinetuning_type: full\noutput_dir: out\n"
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
    arguments, profile, exit_code, words = BAD_INPUTS[case]
    args = [arg(tmp_path) if callable(arg) else arg for arg in arguments]
    extra = {"NNODES": "2", "NODE_RANK": "0"} if "NNODES" in case else {}
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
