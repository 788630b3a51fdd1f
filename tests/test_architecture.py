"""The packages are the architecture: what each may import, checked on the source (the README's Architecture)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROJECT = {"schemas", "infra", "gateway", "workers"}
# What each package may import of the project besides itself.
ALLOWED = {"schemas": set(), "infra": {"schemas"}, "gateway": {"infra", "schemas"}, "workers": {"infra", "schemas"}}
# Libraries that do I/O or talk to the broker: schemas/ holds shapes only.
NOT_IN_SCHEMAS = {"aio_pika", "aiormq", "aiohttp", "asyncpg", "structlog", "prometheus_client"}


def imported_top_levels(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_imports_only_what_it_may(package):
    for path in (REPO / package).rglob("*.py"):
        project_imports = (imported_top_levels(path) & PROJECT) - {package}
        assert project_imports <= ALLOWED[package], f"{path.relative_to(REPO)} imports {project_imports}"


def test_schemas_do_no_io():
    for path in (REPO / "schemas").rglob("*.py"):
        assert not imported_top_levels(path) & NOT_IN_SCHEMAS, path.relative_to(REPO)


def test_bench_imports_only_the_projects_packages():
    for path in (REPO / "bench").rglob("*.py"):
        assert "tests" not in imported_top_levels(path), path.relative_to(REPO)


def test_no_test_module_imports_another_test_module_or_a_conftest():
    for path in (REPO / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tests."):
                last = node.module.split(".")[-1]
                assert node.module.startswith("tests.support."), f"{path.relative_to(REPO)} imports {node.module}"
                assert not last.startswith("test_") and last != "conftest"
