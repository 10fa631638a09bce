"""Guideline profiles are knowledge: the `guideline` Library parameter, its allowed values a
ValueSet in mappings/, checked at load; RPL_CDS_GUIDELINE sets it. A site adds a profile by adding
knowledge, not Python."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from service.app import create_app
from service.authoring.synthetic import profiles
from service.cdshooks.catalogue import load_catalogue
from service.engine import KnowledgeError, ParameterValueProblem
from service.settings import Settings, bundled_knowledge_dirs, data_root

PROFILE_SET = "ValueSet-guideline-profile.json"


def site_copy(tmp_path: Path, extra_profile: str | None = None) -> list[Path]:
    """The bundled knowledge copied, with one more code in the profile ValueSet if asked."""
    directories = []
    for name in ("plandefinitions", "mappings"):
        target = tmp_path / name
        shutil.copytree(data_root() / name, target)
        directories.append(target)
    if extra_profile:
        value_set = tmp_path / "mappings" / PROFILE_SET
        document = json.loads(value_set.read_text(encoding="utf-8"))
        document["compose"]["include"][0]["concept"].append(
            {"code": extra_profile, "display": "A site's own profile"}
        )
        value_set.write_text(json.dumps(document), encoding="utf-8")
    return directories


def test_the_bundled_profiles_come_from_the_knowledge() -> None:
    assert profiles() == ("asrm", "eshre", "rcog")


def test_a_profile_the_knowledge_does_not_list_stops_loading(tmp_path: Path) -> None:
    with pytest.raises(KnowledgeError) as raised:
        load_catalogue(site_copy(tmp_path), {"guideline": "nice"})
    # One problem per library declaring it, naming the setting's value: the expressions that
    # read %guideline are not reported on top of it.
    problems = raised.value.problems
    assert problems
    for problem in problems:
        assert isinstance(problem, ParameterValueProblem), problem
        assert problem.parameter == "guideline"
        assert "'guideline' must be one of ['asrm', 'eshre', 'rcog']" in problem.reason
        assert "'nice'" in problem.reason


def test_a_site_adds_a_fourth_profile_as_knowledge(tmp_path: Path) -> None:
    directories = site_copy(tmp_path, extra_profile="nice")
    assert profiles(tuple(directories)) == ("asrm", "eshre", "nice", "rcog")
    catalogue = load_catalogue(directories, {"guideline": "nice"})
    assert catalogue.parameters()["guideline"] == "nice"


def test_rpl_cds_guideline_sets_the_parameter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RPL_CDS_GUIDELINE", "rcog")
    monkeypatch.setenv("RPL_CDS_PARAMETERS", '{"labLookbackDays": 100}')
    assert Settings().knowledge_parameters == {"labLookbackDays": 100, "guideline": "rcog"}
    monkeypatch.delenv("RPL_CDS_GUIDELINE")
    assert Settings().knowledge_parameters == {"labLookbackDays": 100}
    assert load_catalogue(Settings().all_knowledge_dirs).parameters()["guideline"] == "eshre"


def test_an_app_refuses_knowledge_compiled_for_another_profile(tmp_path: Path) -> None:
    # The profile is compiled into the plans: serving an ESHRE-compiled catalogue under settings
    # that say RCOG would give ESHRE's cards while claiming RCOG.
    eshre = load_catalogue(bundled_knowledge_dirs(), {"guideline": "eshre"})
    with pytest.raises(ValueError, match="guideline"):
        create_app(Settings(guideline="rcog", data_dir=tmp_path), eshre)
    create_app(Settings(guideline="eshre", data_dir=tmp_path), eshre)  # the same values: served
