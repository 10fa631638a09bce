"""JSON reading for knowledge files that refuses a repeated key in one object.

Python's `json` keeps the last of two equal keys without a word. In hand-edited and
git-merged knowledge that silently drops content (a merge once gave an action two `extension`
keys and lost the first), so a repeated key is reported as a load problem instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class RepeatedKeyError(ValueError):
    """An object in the document has the same key twice."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise RepeatedKeyError(f"the key {key!r} appears twice in one object")
        seen[key] = value
    return seen


def read_json(file: Path) -> Any:
    """The document in `file`; `ValueError` when it is not JSON or repeats a key."""
    return json.loads(file.read_text(encoding="utf-8"), object_pairs_hook=_unique_keys)
