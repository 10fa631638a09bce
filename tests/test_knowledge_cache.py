"""The knowledge cache: a second start reuses the parse trees and validations of the first, gives
the same services and answers, and never hides a problem or fails because of the cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import fhir.resources.R4B
import pytest

import service.engine.fhirpath.expression
from service.cdshooks.catalogue import Catalogue, load_catalogue
from service.engine.knowledge_cache import CACHE_FILE, KnowledgeCache
from service.engine.problems import KnowledgeError
from service.settings import data_root

BUNDLED = [data_root() / "plandefinitions", data_root() / "mappings"]


def load(directory: Path, dirs: list[Path] = BUNDLED) -> Catalogue:
    cache = KnowledgeCache.open(directory)
    catalogue = load_catalogue(dirs, None, cache)
    cache.save()
    return catalogue


def refuse(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("computed again although the cache has it")


def test_a_second_start_neither_parses_nor_validates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = load(tmp_path)
    assert (tmp_path / CACHE_FILE).is_file()
    monkeypatch.setattr(service.engine.fhirpath.expression, "parse_strict", refuse)
    # knowledge.py imports it where it validates, so the module attribute is what it finds.
    monkeypatch.setattr(fhir.resources.R4B, "get_fhir_model_class", refuse)
    second = load(tmp_path)
    assert second.discovery() == first.discovery()
    texts = [v.expression.text for plan in second.knowledge.plans for v in plan.variables]
    assert texts == [v.expression.text for plan in first.knowledge.plans for v in plan.variables]


def test_an_unreadable_cache_is_ignored_and_rewritten(tmp_path: Path) -> None:
    (tmp_path / CACHE_FILE).write_text("{not json")
    catalogue = load(tmp_path)
    assert catalogue.services
    stored = json.loads((tmp_path / CACHE_FILE).read_text())
    assert stored["trees"] and stored["validated"]


@pytest.mark.parametrize(
    "stored_tree",
    [
        json.dumps({"children": []}),  # JSON, not a parse tree
        "{not json",
        {"children": [{"type": "TermExpression"}]},  # a tree, but not as JSON text
        None,
    ],
)
def test_a_tree_that_is_not_a_parse_tree_is_parsed_again(tmp_path: Path, stored_tree: Any) -> None:
    load(tmp_path)
    stored = json.loads((tmp_path / CACHE_FILE).read_text())
    assert all(isinstance(tree, str) for tree in stored["trees"].values())  # kept as JSON text
    stored["trees"] = {text: stored_tree for text in stored["trees"]}
    (tmp_path / CACHE_FILE).write_text(json.dumps(stored))
    assert KnowledgeCache.open(tmp_path).tree(next(iter(stored["trees"]))) is None
    assert load(tmp_path).services
    rewritten = KnowledgeCache.open(tmp_path)  # saved again with a parse tree for each text
    assert all(rewritten.tree(text) for text in stored["trees"])


def test_a_changed_expression_is_parsed_and_a_broken_one_reported_on_every_start(
    tmp_path: Path,
) -> None:
    knowledge = tmp_path / "knowledge"
    shutil.copytree(BUNDLED[0], knowledge / "plandefinitions")
    shutil.copytree(BUNDLED[1], knowledge / "mappings")
    dirs = [knowledge / "plandefinitions", knowledge / "mappings"]
    load(tmp_path / "cache", dirs)
    workup = knowledge / "plandefinitions" / "PlanDefinition-rpl-workup.json"
    text = workup.read_text()
    assert "%missingData.exists()" in text
    workup.write_text(text.replace("%missingData.exists()", "%missingData.exists(", 1))
    for _ in range(2):
        with pytest.raises(KnowledgeError) as error:
            load(tmp_path / "cache", dirs)
        assert "FHIRPath does not compile" in str(error.value)


def test_a_resource_that_fails_validation_is_reported_on_every_start(tmp_path: Path) -> None:
    knowledge = tmp_path / "knowledge"
    shutil.copytree(BUNDLED[1], knowledge)
    value_set = knowledge / "ValueSet-heparin.json"
    broken = json.loads(value_set.read_text())
    broken["status"] = 42
    value_set.write_text(json.dumps(broken))
    for _ in range(2):
        with pytest.raises(KnowledgeError) as error:
            load(tmp_path / "cache", [knowledge])
        assert "ValueSet.status" in str(error.value)


def test_a_cache_that_cannot_be_written_does_not_stop_the_start(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache directory would be")
    assert load(blocked).services
