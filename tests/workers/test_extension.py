"""Extending the workers without services: the README shows the example file as it is, and handler modules load
through the `hypercard.handlers` entry-point group."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.support.processes import REPO

README_EXAMPLE = REPO / "examples" / "card_status_change.py"
README_EXAMPLE_TEST = REPO / "examples" / "test_card_status_change.py"


@pytest.mark.parametrize("example", [README_EXAMPLE, README_EXAMPLE_TEST], ids=lambda path: path.name)
def test_readme_shows_the_example_files_verbatim(example):
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert example.read_text() in blocks


def test_handlers_load_through_an_entry_point(tmp_path):
    """A package that declares its module in the `hypercard.handlers` entry-point group is loaded with no setting."""
    (tmp_path / "acme_handlers.py").write_text(README_EXAMPLE.read_text())
    dist = tmp_path / "acme_handlers-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-handlers\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[hypercard.handlers]\nacme = acme_handlers\n")
    probe = (
        "from workers.registry import REGISTRY, load_handler_modules; load_handler_modules([]); print(REGISTRY.kinds)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True, text=True, timeout=60, cwd=REPO, env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "CARD_STATUS_CHANGE" in result.stdout and "OPEN_CARD" in result.stdout
