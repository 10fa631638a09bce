"""Loading knowledge that must fail, and the problems it reports (file, element, reason)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from service.cdshooks.catalogue import load_catalogue
from service.engine.problems import KnowledgeError


def problems_for(tmp_path: Path, files: dict[str, Any]) -> list[str]:
    for name, content in files.items():
        text = content if isinstance(content, str) else json.dumps(content)
        (tmp_path / name).write_text(text)
    with pytest.raises(KnowledgeError) as caught:
        load_catalogue([tmp_path])
    return [str(p) for p in caught.value.problems]


def assert_reported(tmp_path: Path, files: dict[str, Any], expected: list[str]) -> None:
    """Loading these files fails, and each expected fragment is in some problem's text."""
    problems = problems_for(tmp_path, files)
    for fragment in expected:
        assert any(fragment in problem for problem in problems), problems
