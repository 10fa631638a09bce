"""docs/knowledge-authoring.md is true: its complete example (a PlanDefinition for another guideline,
HbA1c monitoring in diabetes) validates and runs exactly as printed, its outputs are what the
service answers, and it names every engine function, variable and mapping the code defines.

The guide marks what is checked with HTML comments before fenced blocks:
`<!-- example-file: NAME -->` (a knowledge file, identical to docs/examples/diabetes-hba1c/NAME),
`<!-- example-request: KIND -->` / `<!-- example-response: KIND -->` (a call and its answer),
`<!-- example-output: KIND -->` (command output) and `<!-- example-today: DATE -->` (the day the
printed outputs were computed for; dates are shifted to today so the facts stay the same).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import typing
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.requestgroup import RequestGroup
from fhir.resources.R4B.servicerequest import ServiceRequest

from service.cdshooks import cards, catalogue, suppression
from service.engine import compiler, registry, terminology
from service.engine import plan as plan_model
from service.engine.compiler import ENGINE_VARIABLES
from service.engine.fhirpath.functions import SIGNATURES
from service.fhir import templates
from service.fhirops import routes
from service.settings import Settings, bundled_knowledge_dirs

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "knowledge-authoring.md"
EXAMPLE_DIR = ROOT / "docs" / "examples" / "diabetes-hba1c"
SERVICE = "diabetes-hba1c"

_BLOCK = re.compile(r"<!-- (example-[a-z]+): (\S+) -->\n```[a-z]*\n(.*?)\n```", re.DOTALL)
_TODAY = re.compile(r"<!-- example-today: (\d{4}-\d{2}-\d{2}) -->")
_DATE = re.compile(r"(?<![\w-])\d{4}-\d{2}-\d{2}(?!\d)")  # also before a T


def guide_text() -> str:
    return GUIDE.read_text(encoding="utf-8")


def blocks(kind: str) -> dict[str, str]:
    """The guide's fenced blocks marked `<!-- example-KIND: name -->`, by name."""
    found: dict[str, str] = {}
    for marker, name, body in _BLOCK.findall(guide_text()):
        if marker == f"example-{kind}":
            assert name not in found, f"two {marker} blocks named {name}"
            found[name] = body
    return found


def documented_today() -> date:
    match = _TODAY.search(guide_text())
    assert match, "the guide must say which day its outputs were computed for"
    return date.fromisoformat(match.group(1))


def shift_dates(text: str, days: int) -> str:
    """Every YYYY-MM-DD in the text moved by `days` (times and offsets are kept)."""

    def moved(match: re.Match[str]) -> str:
        return (date.fromisoformat(match.group(0)) + timedelta(days=days)).isoformat()

    return _DATE.sub(moved, text)


def today() -> date:
    return datetime.now(UTC).date()  # the engine's %today


def as_of_today(text: str) -> Any:
    """A printed JSON block with its dates moved so that the documented day is today."""
    return json.loads(shift_dates(text, (today() - documented_today()).days))


def assert_as_printed(actual: Any, name: str) -> None:
    """`actual` is the guide's `example-response: name` block (dates moved to today). On a
    difference the message holds the block to print instead, dated as the guide is."""
    if actual != as_of_today(blocks("response")[name]):
        printed = shift_dates(
            json.dumps(actual, indent=2, ensure_ascii=False), (documented_today() - today()).days
        )
        pytest.fail(f"the guide's {name} response is out of date; the service answers:\n{printed}")


def write_example(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, body in blocks("file").items():
        (directory / name).write_text(body + "\n", encoding="utf-8")
    return directory


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # The deployment's settings (RPL_CDS_PARAMETERS, ...) must not leak into the check.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPL_CDS_")}
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """The complete example, taken from the guide's text, in a knowledge directory of its own."""
    return write_example(tmp_path / "my-knowledge")


# The guide and the example files


def test_the_guide_shows_the_example_files_verbatim() -> None:
    shown = blocks("file")
    on_disk = {path.name: path for path in EXAMPLE_DIR.iterdir() if path.is_file()}
    assert set(shown) == set(on_disk), "the guide and docs/examples/diabetes-hba1c differ"
    for name, body in shown.items():
        assert on_disk[name].read_text(encoding="utf-8") == body + "\n", name


def test_the_guide_documents_what_the_code_defines() -> None:
    text = guide_text()
    for function in SIGNATURES:
        assert f"`{function}(" in text, f"engine function {function}() is not documented"
    for variable in ENGINE_VARIABLES:
        assert f"`%{variable}`" in text, f"engine variable %{variable} is not documented"
    for name in (*plan_model.ACTION_PATHS, *compiler.ACTIVITY_KINDS, *registry.KNOWLEDGE_TYPES):
        assert f"`{name}`" in text, name
    for element, codes in compiler.ACTION_CODES.items():
        assert f"`{element}`" in text
        for code in codes:
            assert f"{code}" in text, f"{element} code {code}"
    for kind in compiler.PARAMETER_TYPES:
        assert f"`{kind}`" in text, f"parameter type {kind}"
    for url in (
        plan_model.VARIABLE_EXTENSION,
        compiler.DEFAULT_VALUE_EXTENSION,
        compiler.ALLOWED_VALUES_EXTENSION,
        catalogue.QUERY_PATTERN_EXTENSION,
        cards.OVERRIDE_REASON_EXTENSION,
        cards.RECOMMENDED_EXTENSION,
        routes.TRACE_EXTENSION,
        plan_model.APPLICABILITY_BEHAVIOR,
        catalogue.REPEAT_SUPPRESSION_EXTENSION,
        suppression.SUPPRESSES_REPEAT_PROPERTY,
    ):
        assert url in text, url
    for hook in catalogue.ORDER_HOOKS:
        assert f"`{hook}`" in text, hook
    for token in templates.PREFETCH_TOKENS:
        assert f"{{{{{token}}}}}" in text, token
    for code in (*terminology.TRANSLATING_EQUIVALENCES, *terminology.TRANSLATING_RELATIONSHIPS):
        assert f"`{code}`" in text, code
    for priority, indicator in {
        "routine": "info",
        "urgent": "warning",
        "asap": "warning",
        "stat": "critical",
    }.items():
        assert cards._INDICATOR[priority] == indicator
        assert re.search(rf"\| `{priority}`[^|]*\| `{indicator}` \|", text), priority
    parameter = routes._Parameter.model_fields["name"].annotation
    for name in typing.get_args(parameter):
        assert f"| `{name}` |" in text, f"$apply parameter {name}"
    for setting in ("knowledge_dirs", "extra_knowledge_dirs", "parameters", "return_trace"):
        assert setting in Settings.model_fields
        assert f"RPL_CDS_{setting.upper()}" in text, setting


# Validation, as the guide shows it


def test_the_example_validates_as_shown(example: Path) -> None:
    result = run_cli("validate", example.name, cwd=example.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout == blocks("output")["validate"] + "\n"


def test_the_example_validates_beside_the_bundled_knowledge(example: Path) -> None:
    dirs = [str(d) for d in bundled_knowledge_dirs()]
    result = run_cli("validate", *dirs, str(example), cwd=example.parent)
    assert result.returncode == 0, result.stderr
    assert f"ok: service {SERVICE} (patient-view)" in result.stdout


def test_validation_errors_look_as_shown(example: Path) -> None:
    plan = example / "PlanDefinition-diabetes-hba1c.json"
    text = plan.read_text(encoding="utf-8")
    # The three mistakes the guide describes.
    for old, new in (
        ("quantityIn('%')", "quantityIn('percent')"),
        ('"priority": "routine"', '"priority": "high"'),
        ("%activeDiabetes.exists() and %due and", "%activeDiabetes.exists() and %isDue and"),
    ):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    plan.write_text(text, encoding="utf-8")
    result = run_cli("validate", example.name, cwd=example.parent)
    assert result.returncode == 1
    assert result.stderr == blocks("output")["validate-errors"] + "\n"


# Running it


def patient_view_request() -> dict[str, Any]:
    request: dict[str, Any] = as_of_today(blocks("request")["patient-view"])
    return request


async def call(make_client: Any, example: Path, request: dict[str, Any], **settings: Any) -> Any:
    async with make_client(knowledge_dirs=[example], **settings) as client:
        response = await client.post(f"/cds-services/{SERVICE}", json=request)
    assert response.status_code == 200, response.text
    return response.json()


async def test_discovery_lists_the_documented_prefetch(make_client: Any, example: Path) -> None:
    async with make_client(knowledge_dirs=[example]) as client:
        discovery = (await client.get("/cds-services")).json()
    assert_as_printed(discovery, "discovery")
    (service,) = discovery["services"]
    assert service["id"] == SERVICE
    assert service["hook"] == "patient-view"
    assert set(service["prefetch"]) == {"diabetes", "hba1c"}
    # The ConceptMap's equivalent local code is fetched; its `relatedto` one is not.
    assert "https://lab.example.org/codes|HBA1C" in service["prefetch"]["hba1c"]
    assert "GHB" not in service["prefetch"]["hba1c"]


async def test_the_documented_call_returns_the_documented_card(
    make_client: Any, example: Path
) -> None:
    body = await call(make_client, example, patient_view_request())
    assert_as_printed(body, "patient-view")

    (card,) = body["cards"]
    last = shift_dates("2025-01-31", (today() - documented_today()).days)
    assert card["summary"] == f"HbA1c due: last 8.5 % on {last}, 122 days ago"
    assert "69 mmol/mol (8.5 %)" in card["detail"]
    assert card["indicator"] == "info"
    assert card["source"]["topic"] == {
        "system": "https://example.org/fhir/CodeSystem/diabetes-recommendation",
        "code": "hba1c-due",
        "display": "HbA1c monitoring is due",
    }
    assert card["source"]["label"] == "ADA Standards of Care in Diabetes 2025, section 6"
    assert [link["url"] for link in card["links"]] == [
        "https://diabetesjournals.org/care/issue/48/Supplement_1",
        "https://ngsp.org/ifccngsp.asp",
    ]
    assert [reason["code"] for reason in card["overrideReasons"]] == [
        "measured-elsewhere",
        "not-appropriate",
    ]
    assert card["selectionBehavior"] == "at-most-one"
    (suggestion,) = card["suggestions"]
    assert suggestion["label"] == "Order HbA1c"
    assert suggestion["isRecommended"] is True
    (action,) = suggestion["actions"]
    assert action["type"] == "create"
    order = action["resource"]
    ServiceRequest.model_validate(order)
    assert order["code"]["coding"][0]["code"] == "4548-4"
    assert order["status"] == "draft"
    assert order["occurrenceDateTime"] == today().isoformat()
    assert order["reasonReference"] == [{"reference": "Condition/c1"}]
    assert order["instantiatesCanonical"] == [
        "https://example.org/fhir/ActivityDefinition/order-hba1c"
    ]


def entries(request: dict[str, Any], key: str) -> list[dict[str, Any]]:
    resources: list[dict[str, Any]] = [e["resource"] for e in request["prefetch"][key]["entry"]]
    return resources


def at_goal(request: dict[str, Any]) -> None:
    last = entries(request, "hba1c")[-1]
    last["valueQuantity"]["value"] = 48  # mmol/mol: 6.5 %, so the interval is 182 days


def resolved(request: dict[str, Any]) -> None:
    entries(request, "diabetes")[0]["clinicalStatus"]["coding"][0]["code"] = "resolved"


def hba1c_failed(request: dict[str, Any]) -> None:
    request["prefetch"]["hba1c"] = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "timeout"}],
    }


@pytest.mark.parametrize(
    ("change", "settings"),
    [
        (at_goal, {}),
        (resolved, {}),
        (hba1c_failed, {}),
        (None, {"parameters": {"hba1cGoal": 9}}),
    ],
    ids=["at goal", "diabetes not active", "HbA1c prefetch failed", "deployment goal 9 %"],
)
async def test_no_card_when_the_rule_does_not_apply(
    make_client: Any, example: Path, change: Any, settings: dict[str, Any]
) -> None:
    request = patient_view_request()
    if change is not None:
        change(request)
    assert await call(make_client, example, request, **settings) == {"cards": []}


async def test_no_result_on_record(make_client: Any, example: Path) -> None:
    request = patient_view_request()
    request["prefetch"]["hba1c"] = None
    (card,) = (await call(make_client, example, request))["cards"]
    assert card["summary"] == "HbA1c due: no result on record"
    assert card["detail"].startswith("No HbA1c result is on record.")


async def test_an_unusable_unit_keeps_the_static_texts(make_client: Any, example: Path) -> None:
    request = patient_view_request()
    quantity = entries(request, "hba1c")[-1]["valueQuantity"]
    quantity.pop("code")
    quantity.pop("system")
    quantity["unit"] = "mmol per mol"  # not a UCUM code: quantityIn('%') is empty
    (card,) = (await call(make_client, example, request))["cards"]
    plan = json.loads(blocks("file")["PlanDefinition-diabetes-hba1c.json"])
    assert card["summary"] == plan["action"][0]["title"]
    assert card["detail"] == plan["action"][0]["description"]


async def test_apply_returns_the_documented_request_group(make_client: Any, example: Path) -> None:
    async with make_client(knowledge_dirs=[example]) as client:
        response = await client.post(
            f"/PlanDefinition/{SERVICE}/$apply", json=as_of_today(blocks("request")["apply"])
        )
    assert response.status_code == 200, response.text
    group = response.json()
    RequestGroup.model_validate(group)
    assert_as_printed(group, "apply")
    (order,) = group["contained"]
    ServiceRequest.model_validate(order)
    (action,) = group["action"]
    assert action["action"][0]["resource"] == {"reference": f"#{order['id']}"}


async def test_the_trace_shows_the_evaluation(make_client: Any, example: Path) -> None:
    body = await call(make_client, example, patient_view_request(), return_trace=True)
    trace = {entry["action"]: entry for entry in body["extension"]["org.rpl-cds.trace"]}
    assert_as_printed(trace["PlanDefinition.action[0]"], "trace-entry")
    assert trace["PlanDefinition"]["variables"]["daysSince"] == [122]
    assert trace["PlanDefinition"]["variables"]["lastPercent"] == [8.4635]
