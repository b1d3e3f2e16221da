"""The size rules of the code base: no function over 100 lines and no module over 500
lines in the library (src/), the KFP components and the pipelines. Import cycles: test_imports.py."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREES = ("src", "components", "pipelines")
MAX_FUNCTION_LINES = 100
MAX_MODULE_LINES = 500


def _modules() -> list[Path]:
    found = [p for tree in TREES for p in sorted((ROOT / tree).rglob("*.py")) if "egg-info" not in str(p)]
    assert len(found) > 50, found  # the walk found the code base
    return found


def test_no_module_over_500_lines():
    long = {
        str(p.relative_to(ROOT)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"split these modules: {long}"


def test_no_function_over_100_lines():
    long = {}
    for p in _modules():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long[f"{p.relative_to(ROOT)}:{node.lineno} {node.name}"] = n
    assert not long, f"split these functions: {long}"


MAX_ROOT_MODULES = 10


def test_the_package_root_holds_at_most_ten_modules():
    """The root is for the CLI, the stage table and the smallest utilities; the rest lives in packages
    that say what they are (config, demo, distributed, data, models, ...)."""
    root = sorted(p.name for p in (ROOT / "src" / "dinoflow").glob("*.py"))
    assert 0 < len(root) <= MAX_ROOT_MODULES, root
