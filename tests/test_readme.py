"""The README's fault and exit-code tables name the test behind each row: each must exist, and the exit-code table
lists exactly the codes the launcher can return."""

import ast
import re

from llamafactory_fp8.errors import documented_exit_codes

from .conftest import ROOT

README = (ROOT / "README.md").read_text()


def section(start: str, end: str) -> str:
    return README[README.index(start) : README.index(end)]


def assert_named_tests_exist(table: str) -> int:
    named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", table)
    for path, name in named:
        tree = ast.parse((ROOT / path).read_text())
        functions = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
        assert name in functions, f"{path}::{name}"
    return len(named)


def test_every_test_the_fault_table_names_exists():
    assert assert_named_tests_exist(section("## Faults: what was tried", "## Several GPUs and several nodes")) >= 10


def test_the_exit_code_table_lists_every_code_each_with_an_existing_test():
    table = section("## Exit codes", "## Faults: what was tried")
    rows = re.findall(r"^\| ([\d+N]+) \| .+ \| (`tests/[^|]+`) \|$", table, re.M)
    assert [code for code, _ in rows] == [str(code) for code in documented_exit_codes()] + ["128+N"]
    assert assert_named_tests_exist(table) == len(rows)


def test_the_module_table_names_every_module_of_the_package():
    table = section("| step | module | what |", "**Precedence**")
    named = set(re.findall(r"`(\w+\.py)`", table))
    modules = {path.name for path in (ROOT / "entrypoint" / "llamafactory_fp8").glob("*.py")}
    assert modules - {"__init__.py", "__main__.py"} <= named
    assert named <= modules, "the table names a module that is gone"


def test_the_settings_table_lists_every_setting_a_user_sets():
    from llamafactory_fp8 import contract

    table = section("## Settings", "## Exit codes")
    listed = set(re.findall(r"^\| `(\w+)` \|", table, re.M))
    assert listed == {setting.name for setting in contract.SETTINGS if setting.set_by == "user"}
