"""`infra.kinds`: the installed packages' kinds into the registry of kinds, from the `hypercard.kinds` entry point
group or HC_KINDS, as every process loads them."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.processes import REPO

KINDS_MODULE = '''
from schemas.events import Event


class AcmeBase(Event):
    """A base of the package's own kinds: no kind itself."""

    account_no: str


class AcmeLow(AcmeBase, tag="ACME_LOW"):
    business_ids = ("account_no",)
'''
PROBE = (
    "from infra.kinds import load_kinds; from schemas.kinds import KINDS; import os; "
    "print(load_kinds([os.environ.get('PROBE_MODULES', '')]), KINDS.business_ids('ACME_LOW'))"
)


def probe(tmp_path, **env: str) -> str:
    (tmp_path / "acme_kinds.py").write_text(KINDS_MODULE)
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(tmp_path), **env})  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]  # after the "kinds loaded" log line


def test_an_installed_packages_kinds_load_through_the_entry_point_and_a_base_class_is_no_kind(tmp_path):
    dist = tmp_path / "acme_kinds-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-kinds\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[hypercard.kinds]\nacme = acme_kinds\n")
    assert probe(tmp_path) == "['ACME_LOW'] ('account_no',)"


def test_modules_not_installed_load_from_a_comma_separated_list(tmp_path):
    assert probe(tmp_path, PROBE_MODULES="acme_kinds, json") == "['ACME_LOW'] ('account_no',)"
