"""What loading the knowledge computed, kept on disk between starts.

Most of loading the knowledge is two pure functions of its files: parsing the FHIRPath
(fhirpathpy's ANTLR parser takes about 4 ms per expression in pure Python: 1.2 s for the bundled
knowledge) and validating each resource against the FHIR model with fhir.resources (0.7 s, most
of it importing the model classes). `serve` loads the knowledge once to validate it and then once
per worker, and a start-to-ready of seconds delays every deployment and restart. So the cache
keeps:
- parse trees, keyed by the expression's text, each as its JSON text, decoded only while its
  expression is compiled: decoded all at once they took about 9 MB of a worker's heap that,
  once freed, the system never got back (the allocator's arenas stayed pinned by the compiled
  knowledge allocated among them);
- the SHA-256 digests of resources that passed validation (canonical JSON), so that an unchanged
  resource is not validated again.

The file is named for the fhirpathpy and fhir.resources versions that produced it. Only valid
expressions and resources are recorded, so a problem is reported on every start. A missing,
unreadable or malformed file means computing again, never a failed start.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
from fhir.resources import __version__ as FHIR_RESOURCES_VERSION

from service.engine.fhirpath.adapter import VERSION as FHIRPATHPY_VERSION

log = logging.getLogger("rpl_cds.knowledge")

# The format's version is in the name too: a file of another format is not read, only replaced.
CACHE_FILE = (
    f"knowledge-2-fhirpathpy-{FHIRPATHPY_VERSION}-fhir.resources-{FHIR_RESOURCES_VERSION}.json"
)


class KnowledgeCache:
    def __init__(
        self,
        path: Path | None = None,
        trees: dict[str, str] | None = None,
        validated: set[str] | None = None,
    ) -> None:
        self.path = path
        self._trees = trees or {}
        self._validated = validated or set()
        self._added = False

    @classmethod
    def open(cls, directory: Path) -> KnowledgeCache:
        """The cache in `directory` (created when saved); empty when there is none yet."""
        path = directory / CACHE_FILE
        try:
            stored = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return cls(path)
        except (OSError, orjson.JSONDecodeError) as error:
            log.warning("knowledge cache unreadable, ignored", extra={"detail": str(error)})
            return cls(path)
        if not isinstance(stored, dict):
            return cls(path)
        trees = stored.get("trees")
        validated = stored.get("validated")
        return cls(
            path,
            {text: tree for text, tree in trees.items() if isinstance(tree, str)}
            if isinstance(trees, dict)
            else {},
            {digest for digest in validated if isinstance(digest, str)}
            if isinstance(validated, list)
            else set(),
        )

    def tree(self, text: str) -> dict[str, Any] | None:
        encoded = self._trees.get(text)
        if encoded is None:
            return None
        try:
            tree = orjson.loads(encoded)
        except orjson.JSONDecodeError:
            tree = None
        if not _looks_like_tree(tree):
            del self._trees[text]  # so that the tree parsed instead is kept and saved
            return None
        parsed: dict[str, Any] = tree  # checked by _looks_like_tree
        return parsed

    def add_tree(self, text: str, tree: Mapping[str, Any]) -> None:
        if text not in self._trees:
            self._trees[text] = orjson.dumps(tree).decode()
            self._added = True

    def was_validated(self, resource: Mapping[str, Any]) -> bool:
        return digest(resource) in self._validated

    def add_validated(self, resource: Mapping[str, Any]) -> None:
        key = digest(resource)
        if key not in self._validated:
            self._validated.add(key)
            self._added = True

    def save(self) -> None:
        """Write the cache when something was added since opening. Several processes may save at
        once: each writes a whole file and renames it into place."""
        if self.path is None or not self._added:
            return
        payload = orjson.dumps({"trees": self._trees, "validated": sorted(self._validated)})
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
        except OSError as error:
            log.warning("knowledge cache not saved", extra={"detail": str(error)})
            return
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(payload)
            os.replace(temporary, self.path)
        except OSError as error:
            Path(temporary).unlink(missing_ok=True)
            log.warning("knowledge cache not saved", extra={"detail": str(error)})
            return
        self._added = False


def digest(resource: Mapping[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _looks_like_tree(tree: Any) -> bool:
    return (
        isinstance(tree, Mapping)
        and isinstance(tree.get("children"), list)
        and len(tree["children"]) == 1
        and isinstance(tree["children"][0], Mapping)
        and "type" in tree["children"][0]
    )
