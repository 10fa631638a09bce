"""A site's own laboratory codes: the example ConceptMap in docs/examples/local-lab-codes (not
loaded by default), added with RPL_CDS_EXTRA_KNOWLEDGE_DIRS, makes a locally coded result count as
the LOINC test it maps to, in the prefetch templates and in the logic."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from support.scenario_calls import scenario_request, service_for_hook

from service.authoring.synthetic import load_scenarios
from service.settings import data_root

EXAMPLE = data_root() / "docs" / "examples" / "local-lab-codes"
LOCAL = "https://hospital.example.org/fhir/CodeSystem/lab-tests"


def _patient(tmp_path: Path) -> Any:
    """Two losses (RPL met for ESHRE); TSH and TPO antibodies measured last month, coded only
    with the laboratory's local codes."""
    local_result: dict[str, Any] = {"resourceType": "Observation", "date": "today-1mo"}
    spec = {
        "id": "local-lab-codes",
        "description": "thyroid tests done, coded locally",
        "gender": "female",
        "birthDate": "today-34a",
        "resources": [
            {
                "resourceType": "Condition",
                "code": "http://snomed.info/sct|17369002",
                "date": "today-2a",
            },
            {
                "resourceType": "Condition",
                "code": "http://snomed.info/sct|17369002",
                "date": "today-1a",
            },
            local_result
            | {
                "code": f"{LOCAL}|TSH3",
                "valueQuantity": {"value": 1.8, "unit": "mU/L"},
            },
            local_result
            | {"code": f"{LOCAL}|ATPO", "valueQuantity": {"value": 10, "unit": "[IU]/mL"}},
        ],
        "expect": {"eshre": ["aps-screen", "lifestyle-support", "uterine-imaging"]},
    }
    (tmp_path / "local.json").write_text(json.dumps({"description": "-", "scenarios": [spec]}))
    return load_scenarios(tmp_path)[0]


async def _topics(make_client: Any, tmp_path: Path) -> tuple[set[str], Mapping[str, Any]]:
    spec = _patient(tmp_path)
    async with make_client(guideline="eshre") as client:
        services = (await client.get("/cds-services")).json()["services"]
        service = service_for_hook(services, "patient-view")
        body = scenario_request(spec, service, datetime.now(UTC).date())
        response = await client.post(f"/cds-services/{service['id']}", json=body)
    assert response.status_code == 200, response.text
    return {card["source"]["topic"]["code"] for card in response.json()["cards"]}, service


async def test_a_local_lab_code_is_recognised_through_the_site_concept_map(
    make_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    without, service = await _topics(make_client, tmp_path)
    assert "thyroid-screen" in without  # the local codes mean nothing to the bundled knowledge
    assert not any(f"{LOCAL}|TSH3" in query for query in service["prefetch"].values())

    monkeypatch.setenv("RPL_CDS_EXTRA_KNOWLEDGE_DIRS", str(EXAMPLE))
    with_map, service = await _topics(make_client, tmp_path)
    assert with_map == {"aps-screen", "lifestyle-support", "uterine-imaging"}
    # The EHR is asked for the local codes too, so the results arrive in the prefetch.
    assert any(f"{LOCAL}|TSH3" in query for query in service["prefetch"].values())
    # A 'narrower' mapping (a panel is more than a TSH) is shown but does not translate.
    assert not any(f"{LOCAL}|THYPAN" in query for query in service["prefetch"].values())


def test_the_example_is_not_loaded_by_default(make_settings: Any) -> None:
    dirs = make_settings().all_knowledge_dirs
    assert dirs
    assert all(d.resolve() not in (EXAMPLE, *EXAMPLE.parents[:2]) for d in dirs)
