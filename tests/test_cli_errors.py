"""Bad input: one line on stderr, a distinct non-zero exit code, never a traceback, never a different run."""

import pytest

from .conftest import ROOT, run_cli

DEMO = str(ROOT / "configs" / "examples" / "demo.yaml")


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def bad_inputs(tmp_path):
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("")
    return {
        # the issue's list: each its own exit code
        "missing config": (["train", str(tmp_path / "nope.yaml")], "h100-sxm", 10, "not found"),
        "unparsable YAML": (["train", _write(tmp_path, "bad.yaml", "model: [unclosed\n")], "h100-sxm", 11, "not valid YAML (line"),
        "not a mapping": (["train", _write(tmp_path, "list.yaml", "- a\n- b\n")], "h100-sxm", 12, "mapping"),
        "unknown precision flag": (["train", DEMO, "--fp4"], "h100-sxm", 64, "unrecognized arguments: --fp4"),
        "fp8 forced on A100": (["train", DEMO, "--fp8"], "a100", 2, "FP8 refused"),
        "no GPU": (["train", DEMO], "no-gpu", 3, "--gpus all"),
        "output dir not writable": (["train", DEMO, "--allow-cpu", f"output_dir={not_a_dir}/out"], "no-gpu", 14, "not writable"),
        # and the rest we found
        "no model": (["train", _write(tmp_path, "nomodel.yaml", "output_dir: out\n")], "h100-sxm", 13, "model_name_or_path"),
        "malformed override": (["train", DEMO, "novalue"], "h100-sxm", 13, "key=value"),
        "unknown backend": (["train", DEMO, "--backend", "msamp"], "h100-sxm", 64, "invalid choice"),
        "bf16 forced on T4": (["train", DEMO, "--bf16"], "t4", 4, "BF16 refused"),
        "NNODES without MASTER_ADDR": (["train", DEMO, "--dry-run"], "h100-sxm", 16, "MASTER_ADDR"),
    }


ISSUE_CASES = 7
CASE_NAMES = [
    "missing config", "unparsable YAML", "not a mapping", "unknown precision flag", "fp8 forced on A100", "no GPU",
    "output dir not writable", "no model", "malformed override", "unknown backend", "bf16 forced on T4",
    "NNODES without MASTER_ADDR",
]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_bad_input_is_one_line_and_its_own_exit_code(tmp_path, case):
    args, profile, exit_code, words = bad_inputs(tmp_path)[case]
    extra = {"NNODES": "2", "NODE_RANK": "0"} if "NNODES" in case else {}
    result = run_cli(*args, profile=profile, **extra)
    assert result.returncode == exit_code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert words in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert "accelerate.commands.launch" not in result.stdout, "nothing may launch"


def test_exit_codes_are_distinct(tmp_path):
    cases = bad_inputs(tmp_path)
    assert list(cases) == CASE_NAMES
    codes = [code for _args, _profile, code, _words in list(cases.values())[:ISSUE_CASES]]
    assert len(codes) == len(set(codes))
