"""The README's fault table names the test behind each row: each must exist."""

import ast
import re

from .conftest import ROOT


def test_every_test_the_fault_table_names_exists():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Faults: what was tried") : readme.index("## Several GPUs and several nodes")]
    named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", table)
    assert len(named) >= 10
    for path, name in named:
        tree = ast.parse((ROOT / path).read_text())
        functions = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
        assert name in functions, f"{path}::{name}"
