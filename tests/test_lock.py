"""The image is built from requirements.lock: every package pinned with its hashes, the lock in step with
pyproject.toml, and `make audit` checks that lock (issue 26: no `>=` resolved at build time)."""

from __future__ import annotations

import re
import shlex
import subprocess
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.image import parse_dockerfile

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.lock"


def locked() -> dict[str, tuple[str, list[str], str]]:
    """Each locked package: its version, its hashes and the `# via` text that says who asked for it."""
    text = LOCK.read_text()
    entries: dict[str, tuple[str, list[str], str]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        found = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", block)
        if found:
            via = " ".join(re.findall(r"#\s+(?:via\s+)?(\S.*)", block))
            entries[canonicalize_name(found.group(1))] = (
                found.group(2),
                re.findall(r"--hash=(sha256:\w+)", block),
                via,
            )
    return entries


def direct_requirements() -> list[Requirement]:
    """What pyproject.toml asks for the image: the dependencies, the `otel` extra, the build's requirements."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    wanted = [*project["project"]["dependencies"], *project["project"]["optional-dependencies"]["otel"]]
    return [Requirement(line) for line in [*wanted, *project["build-system"]["requires"]]]


def test_every_package_of_the_lock_is_pinned_with_hashes():
    entries = locked()
    assert entries, "requirements.lock lists no package"
    for name, (version, hashes, _) in entries.items():
        assert hashes, f"{name}=={version} has no --hash in requirements.lock"
    assert not re.search(r"^\s*[A-Za-z0-9_.-]+\s*(>=|<=|~=|>|<|!=)", LOCK.read_text(), re.MULTILINE)


def test_the_lock_is_in_step_with_pyproject():
    """A dependency added, dropped or raised in pyproject.toml without `make lock` fails here, before a build."""
    entries = locked()
    for requirement in direct_requirements():
        name = canonicalize_name(requirement.name)
        assert name in entries, f"{requirement} is in pyproject.toml, not in requirements.lock: run `make lock`"
        version = entries[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"requirements.lock pins {name}=={version}, pyproject.toml asks {requirement}: run `make lock`"
        )
    direct = {canonicalize_name(r.name) for r in direct_requirements()}
    asked_by_pyproject = {name for name, (_, _, via) in entries.items() if "pyproject.toml" in via}
    assert asked_by_pyproject == direct, f"no longer in pyproject.toml: {asked_by_pyproject - direct}; run `make lock`"


def pip_commands() -> list[list[str]]:
    commands = []
    for stage in parse_dockerfile(REPO / "Dockerfile"):
        for keyword, arguments in stage.instructions:
            if keyword == "RUN":
                commands += [shlex.split(part) for part in arguments.split("&&") if "pip " in part]
    return commands


def test_the_image_installs_only_what_the_lock_names_with_its_hashes():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "hadolint ignore" not in dockerfile, "DL3013 (pinned versions) and every other rule apply"
    assert "COPY requirements.lock" in dockerfile
    for command in pip_commands():
        if "--no-deps" in command:  # the project's own wheel, built from this source
            assert command[-1] in {".", "/wheels/hypercard_gateway-*.whl"}, command
        else:
            assert "--require-hashes" in command and command[-2] == "-r", command
            assert command[-1].endswith("requirements.lock"), command
        assert not any(re.search(r"[<>=~]=|\[", word) for word in command), f"a range resolved at build: {command}"


def test_make_audit_checks_the_lock_with_its_hashes():
    dry_run = subprocess.run(["make", "-n", "audit"], cwd=REPO, capture_output=True, text=True)
    (audit,) = [line for line in dry_run.stdout.splitlines() if "pip-audit " in line]
    words = shlex.split(audit)
    assert words[words.index("-r") + 1] == "requirements.lock" and "--require-hashes" in words, audit
