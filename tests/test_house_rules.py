"""The tree passes the house style: ruff's lint rules and its formatter
(configured once, in pyproject.toml)."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "command", [["check", "."], ["format", "--check", "."]], ids=["lint", "format"]
)
def test_ruff_passes(command):
    result = subprocess.run(
        [sys.executable, "-m", "ruff", *command], cwd=REPO, capture_output=True, text=True
    )
    assert "No module named ruff" not in result.stderr, "install the test extra: .[test]"
    assert result.returncode == 0, result.stdout + result.stderr
