"""The type checker, in the suite (so CI runs it as `make lint` does): mypy --strict over gateway/, workers/, infra/
and schemas/ (pyproject's [tool.mypy]), and the two packages user modules import are marked as typed."""

from __future__ import annotations

import subprocess
import sys

from tests.support.processes import REPO


def test_mypy_strict_finds_nothing():
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental"], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout


def test_the_packages_users_import_are_typed():
    for package in ("workers", "schemas"):
        assert (REPO / package / "py.typed").is_file()
    assert 'py.typed"' in (REPO / "pyproject.toml").read_text()  # shipped in the wheel too
