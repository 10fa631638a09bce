"""Just enough of a Dockerfile parser for tests to rebuild what the image builds: stages, and
their COPY, WORKDIR, ENV and CMD instructions (the forms this project's Dockerfile uses)."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Copy:
    sources: tuple[str, ...]
    destination: str
    from_stage: str | None


@dataclass
class Stage:
    base: str
    name: str | None
    workdir: str = "/"
    copies: list[Copy] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cmd: list[str] = field(default_factory=list)


def _instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).strip().partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def _words(arguments: str) -> list[str]:
    if arguments.startswith("["):
        words: list[str] = json.loads(arguments)
        return words
    return shlex.split(arguments)


def parse(path: Path) -> list[Stage]:
    stages: list[Stage] = []
    for keyword, arguments in _instructions(path.read_text(encoding="utf-8")):
        if keyword == "FROM":
            words = arguments.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
            continue
        if not stages:
            continue  # ARG before the first FROM
        stage = stages[-1]
        if keyword == "WORKDIR":
            stage.workdir = str(Path(stage.workdir) / arguments)
        elif keyword == "COPY":
            words = _words(arguments)
            flags = [w for w in words if w.startswith("--")]
            paths = [w for w in words if not w.startswith("--")]
            from_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
            stage.copies.append(Copy(tuple(paths[:-1]), paths[-1], from_stage))
        elif keyword == "ENV":
            for word in shlex.split(arguments):
                name, _, value = word.partition("=")
                stage.env[name] = value
        elif keyword == "CMD":
            stage.cmd = _words(arguments)
    return stages


def stage_named(stages: list[Stage], name: str) -> Stage:
    return next(stage for stage in stages if stage.name == name)


def copy_context(stage: Stage, context: Path, target: Path, *, leave_out: str = "") -> None:
    """Lay out in `target` (standing for the stage's WORKDIR) exactly what the stage's COPY
    instructions from the build context put there; `leave_out` drops one source."""
    for copy in stage.copies:
        if copy.from_stage is not None:
            continue
        destination = Path(stage.workdir) / copy.destination
        local = target / destination.relative_to(stage.workdir)
        into_directory = copy.destination.endswith("/") or len(copy.sources) > 1
        for source in copy.sources:
            if source == leave_out:
                continue
            origin = context / source
            if origin.is_dir():
                # Docker copies a directory's contents into the destination directory.
                _copy_tree(origin, local)
            else:
                path = local / origin.name if into_directory else local
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(origin.read_bytes())


def _copy_tree(origin: Path, target: Path) -> None:
    for path in origin.rglob("*"):
        if "__pycache__" in path.parts or path.is_dir():
            continue
        destination = target / path.relative_to(origin)
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(path.read_bytes())
