"""docs/clinical-logic.md: the clinical logic rendered for review, kept in step with the knowledge."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from service.authoring.clinical_doc import COMMAND, render
from service.cli import main
from service.settings import bundled_knowledge_dirs, data_root

ROOT = data_root()
COMMITTED = ROOT / "docs" / "clinical-logic.md"
EXAMPLE = ROOT / "docs" / "examples" / "diabetes-hba1c"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
FHIRPATH = "text/fhirpath"


def test_committed_file_is_up_to_date() -> None:
    rendered = render(bundled_knowledge_dirs())
    committed = COMMITTED.read_text(encoding="utf-8") if COMMITTED.is_file() else ""
    assert committed == rendered, (
        f"docs/clinical-logic.md is out of date with the knowledge: run `{COMMAND}` "
        "and commit the result"
    )


def _write(directory: Path, name: str, resource: dict[str, Any]) -> None:
    (directory / name).write_text(json.dumps(resource, indent=2), encoding="utf-8")


@pytest.fixture
def knowledge(tmp_path: Path) -> Path:
    """The authoring guide's HbA1c example plus a tiny order-sign rule that cancels a draft order
    and orders a medication with a dosage."""
    directory = tmp_path / "kb"
    shutil.copytree(EXAMPLE, directory)
    glibenclamide = "https://example.org/fhir/ValueSet/glibenclamide"
    _write(
        directory,
        "ValueSet-glibenclamide.json",
        {
            "resourceType": "ValueSet",
            "id": "glibenclamide",
            "url": glibenclamide,
            "title": "Glibenclamide products",
            "description": "Orders that count as glibenclamide.",
            "status": "active",
            "compose": {
                "include": [
                    {"system": RXNORM, "concept": [{"code": "4815", "display": "glyburide"}]}
                ]
            },
        },
    )
    _write(
        directory,
        "ActivityDefinition-gliclazide.json",
        {
            "resourceType": "ActivityDefinition",
            "id": "gliclazide",
            "url": "https://example.org/fhir/ActivityDefinition/gliclazide",
            "title": "Gliclazide",
            "status": "active",
            "kind": "MedicationRequest",
            "productCodeableConcept": {
                "coding": [{"system": RXNORM, "code": "4816", "display": "gliclazide"}]
            },
            "dosage": [{"text": "30 mg once daily with breakfast"}],
        },
    )
    _write(
        directory,
        "PlanDefinition-tiny-switch.json",
        {
            "resourceType": "PlanDefinition",
            "id": "tiny-switch",
            "url": "https://example.org/fhir/PlanDefinition/tiny-switch",
            "title": "Tiny: switch a sulfonylurea",
            "status": "active",
            "description": "Replaces glibenclamide by gliclazide when an order is signed.",
            "action": [
                {
                    "id": "replace-glibenclamide",
                    "title": "Glibenclamide: high risk of hypoglycaemia",
                    "description": "Glibenclamide causes more hypoglycaemia.\n\n**Do:** switch.",
                    "priority": "urgent",
                    "code": [
                        {
                            "coding": [
                                {
                                    "system": "https://example.org/fhir/CodeSystem/tiny",
                                    "code": "switch-glibenclamide",
                                }
                            ]
                        }
                    ],
                    "documentation": [
                        {
                            "type": "citation",
                            "display": "AGS Beers Criteria 2023",
                            "url": "https://example.org/beers-2023",
                        }
                    ],
                    "trigger": [{"type": "named-event", "name": "order-sign"}],
                    "extension": [
                        {
                            "url": "http://hl7.org/fhir/StructureDefinition/variable",
                            "valueExpression": {
                                "name": "glibenclamideOrders",
                                "description": "Draft orders of glibenclamide",
                                "language": FHIRPATH,
                                "expression": "%context.draftOrders.entry.resource.where("
                                f"medication.inValueSet('{glibenclamide}'))",
                            },
                        }
                    ],
                    "condition": [
                        {
                            "kind": "applicability",
                            "expression": {
                                "description": "A draft order is glibenclamide",
                                "language": FHIRPATH,
                                "expression": "%glibenclamideOrders.exists()",
                            },
                        }
                    ],
                    "action": [
                        {
                            "id": "switch",
                            "title": "Cancel glibenclamide, order gliclazide",
                            "action": [
                                {
                                    "id": "cancel",
                                    "title": "Cancel the glibenclamide order",
                                    "type": {
                                        "coding": [
                                            {
                                                "system": "http://terminology.hl7.org/CodeSystem/action-type",
                                                "code": "remove",
                                            }
                                        ]
                                    },
                                    "dynamicValue": [
                                        {
                                            "path": "resource",
                                            "expression": {
                                                "language": FHIRPATH,
                                                "expression": "%glibenclamideOrders",
                                            },
                                        }
                                    ],
                                },
                                {
                                    "id": "order",
                                    "title": "Order gliclazide",
                                    "definitionCanonical": "https://example.org/fhir/ActivityDefinition/gliclazide",
                                },
                            ],
                        }
                    ],
                }
            ],
        },
    )
    return directory


def test_renders_conditions_suggestions_and_sources(knowledge: Path, tmp_path: Path) -> None:
    text = render([knowledge])
    expected = [
        # the header, with repo-relative (never absolute) paths
        f"Generated** by `{COMMAND}` from the knowledge in `kb/`",
        # a PlanDefinition: services, variables (pipes escaped in the table), parameters, data
        "## PlanDefinition: Diabetes: HbA1c monitoring",
        "file `kb/PlanDefinition-diabetes-hba1c.json`",
        "**Served as:** `diabetes-hba1c` (patient-view)",
        "| `%lastHbA1c` |  | `%hba1c.where(status in ('final' \\| 'amended' \\| 'corrected')).latest()` |",
        "| `%hba1cGoal` | decimal | `7` | HbA1c goal in % (NGSP units); ADA: < 7 % for many non-pregnant adults |",
        "| `%hba1c` | Observation | ValueSet HbA1c (`https://example.org/fhir/ValueSet/hba1c`) |",
        # a recommendation: heading, card kind, hooks, conditions, variables
        "### `hba1c-due` HbA1c monitoring is due",
        "**Card:** info (priority routine) · **Hooks:** patient-view",
        "- Active diabetes, the last HbA1c is missing or older than the interval, and all data "
        "arrived: `%activeDiabetes.exists() and %due and %missingData.empty()`",
        "- `%due`: _(no description)_ `%lastHbA1c.empty() or %daysSince >= %interval`",
        # suggestions and the ActivityDefinition's code
        "- **Order HbA1c** (recommended): Order an HbA1c test today",
        "  - code: `http://loinc.org|4548-4` Hemoglobin A1c/Hemoglobin.total in Blood (text: HbA1c)",
        # card text, links, override reasons
        "> **Recommendation:** measure HbA1c at least every 3 months",
        "- [ADA Standards of Care in Diabetes 2025, section 6]"
        "(https://diabetesjournals.org/care/issue/48/Supplement_1) (citation)",
        "- Measured elsewhere; the result is not in this record (`measured-elsewhere`)",
        # the second PlanDefinition: warning card, removal, a medication with product and dosage
        "### `switch-glibenclamide` Glibenclamide: high risk of hypoglycaemia",
        "**Card:** warning (priority urgent) · **Hooks:** order-sign",
        "- A draft order is glibenclamide: `%glibenclamideOrders.exists()`",
        "- `%glibenclamideOrders`: Draft orders of glibenclamide: `%context.draftOrders",
        "- **Cancel glibenclamide, order gliclazide**",
        "  - **Cancel the glibenclamide order**",
        "    - cancels the draft order given by `%glibenclamideOrders`",
        "  - **Order gliclazide**",
        "    - creates a draft **MedicationRequest** from ActivityDefinition "
        "`https://example.org/fhir/ActivityDefinition/gliclazide` (Gliclazide)",
        f"    - product: `{RXNORM}|4816` gliclazide",
        "    - dosage: 30 mg once daily with breakfast",
        "> Glibenclamide causes more hypoglycaemia.\n>\n> **Do:** switch.",
        "- [AGS Beers Criteria 2023](https://example.org/beers-2023) (citation)",
        # terminology: ValueSet codes, ConceptMap rows, unit tables
        "#### Glibenclamide products",
        "Orders that count as glibenclamide.",
        f"| `{RXNORM}` | `4815` | glyburide |",
        "| `http://loinc.org` | `59261-8` | Hemoglobin A1c/Hemoglobin.total in Blood by IFCC protocol |",
        "| `HBA1C` | HbA1c (IFCC) | `59261-8` | Hemoglobin A1c/Hemoglobin.total in Blood by IFCC "
        "protocol | equivalent | yes |",
        "| relatedto | no |",
        "#### HbA1c: IFCC units (mmol/mol) to NGSP units (%)",
        "| `mmol/mol` | `%` | 0.0915 | 2.15 | NGSP = 0.0915 x IFCC + 2.15 |",
    ]
    missing = [snippet for snippet in expected if snippet not in text]
    assert not missing, f"not in the rendered document: {missing}\n\n{text}"
    assert str(tmp_path) not in text
    assert text.index("## PlanDefinition") < text.index("## Terminology")
    assert text.index("### `hba1c-due`") < text.index("### `switch-glibenclamide`")
    # The actions' parts come in the documented order.
    section = text[text.index("### `switch-glibenclamide`") :]
    parts = ["**When it fires**", "**What it suggests:**", "**Card text:**", "**Evidence"]
    assert [section.index(part) for part in parts] == sorted(section.index(p) for p in parts)
    assert render([knowledge]) == text


def test_cli_check_fails_on_a_stale_file(
    knowledge: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out" / "clinical-logic.md"
    assert main(["render-clinical-logic", "--check", "--output", str(output), str(knowledge)]) == 1
    assert "does not exist" in capsys.readouterr().err

    assert main(["render-clinical-logic", "--output", str(output), str(knowledge)]) == 0
    assert output.read_text(encoding="utf-8") == render([knowledge])
    assert main(["render-clinical-logic", "--check", "--output", str(output), str(knowledge)]) == 0

    output.write_text(output.read_text(encoding="utf-8") + "edited by hand\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["render-clinical-logic", "--check", "--output", str(output), str(knowledge)]) == 1
    error = capsys.readouterr().err
    assert "out of date" in error
    assert f"run `{COMMAND} --output" in error
    assert "+edited by hand" not in error and "-edited by hand" in error


def test_cli_reports_broken_knowledge(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "PlanDefinition-x.json").write_text("{not json", encoding="utf-8")
    output = tmp_path / "clinical-logic.md"
    assert main(["render-clinical-logic", "--output", str(output), str(broken)]) == 1
    assert "not readable JSON" in capsys.readouterr().err
    assert not output.exists()
