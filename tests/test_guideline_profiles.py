"""Guideline profiles are knowledge: the `guideline` Library parameter, its allowed values a
ValueSet in mappings/, checked at load; RPL_CDS_GUIDELINE sets it. A site adds a profile by adding
knowledge, not Python."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import running
from support.calls import WORKUP
from support.patients import Scenario, topics, workup_request

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


async def test_a_site_profile_drives_the_rules_written_for_it(tmp_path: Path) -> None:
    """The site's profile is read by the rules the site writes for it, like a bundled one: here
    its own loss threshold (three, as RCOG), in the knowledge only."""
    directories = site_copy(tmp_path, extra_profile="nice")
    workup = tmp_path / "plandefinitions" / "PlanDefinition-rpl-workup.json"
    plan = json.loads(workup.read_text(encoding="utf-8"))
    (threshold,) = [
        e["valueExpression"]
        for e in plan["extension"]
        if e.get("valueExpression", {}).get("name") == "rplThreshold"
    ]
    assert threshold["expression"] == "iif(%guideline = 'rcog', 3, 2)"
    threshold["expression"] = "iif(%guideline in ('rcog' | 'nice'), 3, 2)"
    workup.write_text(json.dumps(plan), encoding="utf-8")

    two = Scenario("two losses").female().miscarriage("2025-01-10").miscarriage("2025-09-02")
    three = Scenario("three losses").female().miscarriage("2024-03-01")
    three = three.miscarriage("2025-01-10").miscarriage("2025-09-02")
    answered = {}
    for profile in ("asrm", "nice"):
        settings = Settings(
            guideline=profile, knowledge_dirs=directories, data_dir=tmp_path / profile
        )
        async with running(create_app(settings)) as client:
            for name, scenario in (("two", two), ("three", three)):
                response = await client.post(WORKUP, json=workup_request(scenario))
                assert response.status_code == 200, response.text
                answered[profile, name] = topics(response.json())
    assert "aps-screen" in answered["asrm", "two"]
    assert "aps-screen" not in answered["nice", "two"]  # the site's threshold: three
    assert "aps-screen" in answered["nice", "three"]


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
