"""The image's file set and install steps, replayed without a container engine.

Each stage of the Dockerfile gets a folder standing for its root. Its COPY lines lay out what the build context
gives them (the repository minus .dockerignore), or what an earlier stage's root holds (`--from`); its RUN lines'
pip commands run in its WORKDIR with absolute paths moved under that folder, with the pip of a fresh venv instead of
the image's Python. What the last stage installs is then in that venv, and nothing else of the checkout is."""

from __future__ import annotations

import fnmatch
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Stage:
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse_dockerfile(path: Path) -> list[Stage]:
    """The stages, each with its instructions as (KEYWORD, arguments), continuation lines joined."""
    stages: list[Stage] = []
    for line in re.sub(r"\\\n", " ", path.read_text()).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, arguments = line.partition(" ")
        keyword, arguments = keyword.upper(), arguments.strip()
        if keyword == "FROM":
            alias = re.search(r"\s+AS\s+(\S+)$", arguments, re.IGNORECASE)
            stages.append(Stage(alias.group(1) if alias else str(len(stages))))
        stages[-1].instructions.append((keyword, arguments))
    return stages


class DockerIgnore:
    """The .dockerignore patterns, matched like Docker does for the ones this project uses."""

    def __init__(self, path: Path) -> None:
        lines = [line.strip() for line in path.read_text().splitlines()] if path.exists() else []
        self.patterns = [line.rstrip("/") for line in lines if line and not line.startswith("#")]
        assert not any(p.startswith("!") for p in self.patterns), "exceptions (!) are not replayed"

    def excludes(self, relative: str) -> bool:
        parts = relative.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        for pattern in self.patterns:
            # `**/x` matches x at any depth, the top included; a matched folder excludes all below it.
            candidates = {pattern, pattern.removeprefix("**/")}
            if any(fnmatch.fnmatchcase(prefix, c) for prefix in prefixes for c in candidates):
                return True
        return False


def _copy(source: Path, target: Path, ignore: DockerIgnore | None, context: Path) -> None:
    if source.is_dir():
        for path in sorted(source.rglob("*")):
            if path.is_file() and not (ignore and ignore.excludes(path.relative_to(context).as_posix())):
                _copy(path, target / path.relative_to(source), None, context)
        return
    assert source.is_file(), f"COPY names {source}, which does not exist"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target)


def _pip_commands(run: str) -> list[list[str]]:
    commands = [shlex.split(part) for part in run.split("&&")]
    return [c for c in commands if c[:1] == ["pip"] or c[:3] == ["python", "-m", "pip"]]


def replay(dockerfile: Path, context: Path, roots: Path, venv: Path) -> list[Stage]:
    """Lay out every stage under roots/<stage> and run its pip commands with the venv's pip."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    ignore = DockerIgnore(context / ".dockerignore")
    stages = parse_dockerfile(dockerfile)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_NO_CACHE", "PYTHONPATH", "VIRTUAL_ENV"))}
    pip_runs = 0
    for stage in stages:
        root, workdir = roots / stage.name, "/"
        root.mkdir(parents=True)
        for keyword, arguments in stage.instructions:
            if keyword == "WORKDIR":
                workdir = os.path.join(workdir, arguments)
                (root / workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
            elif keyword == "COPY":
                words = shlex.split(arguments)
                origin = next((w.split("=", 1)[1] for w in words if w.startswith("--from=")), None)
                *sources, destination = [w for w in words if not w.startswith("--")]
                destination = os.path.join(workdir, destination)
                for source in sources:
                    if origin is None:
                        path, ignored = context / source, ignore
                    else:
                        path, ignored = roots / origin / source.lstrip("/"), None
                    into_folder = destination.endswith("/") or len(sources) > 1
                    target = root / destination.lstrip("/")
                    _copy(path, target / path.name if into_folder and path.is_file() else target, ignored, context)
            elif keyword == "RUN":
                for command in _pip_commands(arguments):
                    words = [w for w in command[command.index("pip") + 1 :] if w != "--no-cache-dir"]
                    adapted: list[str] = []
                    for word in words:  # the stage's absolute paths are under its root here
                        word = str(root) + word if word.startswith("/") else word
                        adapted += sorted(glob.glob(word)) if "*" in word else [word]
                    # --no-cache-dir is dropped: the machine's pip cache changes how fast, not what is installed.
                    subprocess.run(
                        [str(venv / "bin/python"), "-m", "pip", "--quiet", *adapted],
                        cwd=root / workdir.lstrip("/"), env=env, check=True,
                    )  # fmt: skip
                    pip_runs += 1
    assert pip_runs, "the Dockerfile installs nothing with pip"
    return stages
