"""Architecture and lint: layers and library ownership (import-linter), ruff."""

from __future__ import annotations

import shutil
import subprocess

from tests.conftest import REPO


def test_import_contracts() -> None:
    assert shutil.which("lint-imports"), "import-linter is a test dependency: pip install -e '.[test]'"
    r = subprocess.run(["lint-imports"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "broken" not in r.stdout.lower().replace("0 broken", "")


def test_ruff() -> None:
    assert shutil.which("ruff"), "ruff is a test dependency: pip install -e '.[test]'"
    r = subprocess.run(["ruff", "check", "pipeline", "tests", "benchmarks"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr  # with the size and complexity limits of pyproject.toml


def test_ruff_format() -> None:
    r = subprocess.run(
        ["ruff", "format", "--check", "pipeline", "tests", "benchmarks"], cwd=REPO, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_no_function_in_the_package_is_longer_than_60_lines() -> None:
    """Issue 16's bound (ruff's statement count misses long expressions and docstrings): stages are named steps."""
    import ast

    long = []
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > 60:
                long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})")
    assert not long, long


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = (REPO / "README.md").read_text()
    blocks = [b.strip() for b in readme.split("```")[1::2]]
    first = next(b for b in blocks if b.startswith(("bash", "sh")))
    commands = [ln for ln in first.splitlines() if ln and not ln.startswith(("bash", "sh", "#"))]
    assert len(commands) == 2, commands
    ci = (REPO / ".ci" / "run").read_text()
    assert commands[1] in ci, "the README's test command must be the command .ci/run runs"
