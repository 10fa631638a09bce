"""A problem found in knowledge: which file, which element, why. Loading collects them all so an
author sees every one at once; any problem stops start-up."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Problem:
    file: Path
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.path}: {self.reason}"


@dataclass(frozen=True)
class ParameterValueProblem(Problem):
    """The value the deployment gave a knowledge parameter is not one it accepts: a setting to
    fix, not the knowledge."""

    parameter: str


class KnowledgeError(Exception):
    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))
