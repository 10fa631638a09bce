"""Request bodies for the load benchmark: synthetic RPL patients of increasing size.

The base patient is made of the records of several scenarios in `scenarios/` (three losses,
antiphospholipid and thyroid labs, HbA1c, karyotype, imaging, treatments), merged until the
code-filtered prefetch an EHR that honours the templates would send holds about 30 resources.
Larger patients add filler an EHR that ignores the code filters would send as well: vital signs
and routine labs (LOINC, with a local `urn:bench:filler` coding), other conditions, medications,
procedures, reports and orders, none of them in the knowledge's value sets, dated over five
years. Their prefetch answers every query with all of the patient's resources of that type.

Each body is serialised once; the same bytes go to the service and to the floor app.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

from support.scenario_calls import (  # noqa: E402
    build_prefetch,
    hook_context,
    record_answer,
    scenario_request,
    searchset,
    service_for_hook,
)

from service.authoring.synthetic import ScenarioSpec, load_scenarios  # noqa: E402

SIZES = (30, 200, 1000, 5000)
BASE_TARGET = 30
FILLER_SYSTEM = "urn:bench:filler"
# Scenarios whose records make a busy but coherent RPL chart; others fill up to the target.
PREFERRED_SCENARIOS = (
    "aps-persistent-pregnant-aspirin-and-heparin",
    "thyroid-tested-14-months-ago",
    "thyroid-tested-6-months-ago",
    "hba1c-50-mmol-per-mol",
    "parental-karyotype-done-three-losses",
    "septate-uterus-after-hysteroscopy",
    "poc-trisomy-three-losses",
    "heparin-thrombophilia-dvt",
    "aps-panel-negative-14-months-ago",
    "pregnant-bleeding-iup-prior-miscarriage",
    "uterine-imaging-years-ago",
)
DRAFT_ORDERS: tuple[dict[str, Any], ...] = (
    {"resourceType": "MedicationRequest", "text": "Prednisolone 20 mg tablets, once daily"},
    {
        "resourceType": "MedicationRequest",
        "code": "http://www.nlm.nih.gov/research/umls/rxnorm|854235",
        "text": "Enoxaparin 40 mg subcutaneous once daily",
    },
    {"resourceType": "ServiceRequest", "code": "http://loinc.org|3016-3", "text": "TSH"},
)

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
# (LOINC code, local code, value, UCUM unit, category)
_OBSERVATIONS = (
    ("8867-4", "hr", 72, "/min", "vital-signs"),
    ("8480-6", "sbp", 118, "mm[Hg]", "vital-signs"),
    ("8462-4", "dbp", 76, "mm[Hg]", "vital-signs"),
    ("29463-7", "wt", 64.5, "kg", "vital-signs"),
    ("8310-5", "temp", 36.8, "Cel", "vital-signs"),
    ("9279-1", "rr", 14, "/min", "vital-signs"),
    ("59408-5", "spo2", 98, "%", "vital-signs"),
    ("718-7", "hgb", 13.1, "g/dL", "laboratory"),
    ("6690-2", "wbc", 6.2, "10*3/uL", "laboratory"),
    ("2160-0", "creat", 0.8, "mg/dL", "laboratory"),
    ("2951-2", "na", 139, "mmol/L", "laboratory"),
    ("1742-6", "alt", 21, "U/L", "laboratory"),
)
_CONDITIONS = ("J45.909", "I10", "K21.9", "F41.1", "J30.9", "L20.9", "G43.909", "N39.0", "J06.9")
_MEDICATIONS = (
    ("308182", "Amoxicillin 500 mg capsule"),
    ("310965", "Ibuprofen 400 mg tablet"),
    ("1014676", "Cetirizine 10 mg tablet"),
    ("198051", "Omeprazole 20 mg capsule"),
    ("745679", "Albuterol 90 mcg/actuation inhaler"),
    ("312940", "Sertraline 50 mg tablet"),
)
_PROCEDURES = ("80146002", "73761001", "117015009")
_PANELS = ("58410-2", "24323-8", "57698-3", "24357-6")
# Share of the filler by type, as in a general practice record: mostly results.
_MIX = (
    ("Observation", 60),
    ("Condition", 12),
    ("MedicationRequest", 12),
    ("DiagnosticReport", 6),
    ("Procedure", 5),
    ("ServiceRequest", 5),
)


@dataclass(frozen=True)
class Body:
    name: str  # pv-30, order-sign-3, nopf-30...
    service_id: str
    hook: str
    resources: int  # resources in the prefetch (the Patient included)
    payload: bytes


def _base_shorts(templates: Mapping[str, str], today: date, target: int) -> list[dict[str, Any]]:
    """Resources (short form) of several scenarios, without repeats, until the code-filtered
    prefetch of a patient holding them reaches `target` resources."""
    specs = load_scenarios(ROOT / "scenarios")
    by_id = {spec.id: spec for spec in specs}
    ordered = [by_id[i] for i in PREFERRED_SCENARIOS if i in by_id]
    ordered += [s for s in specs if s.id not in PREFERRED_SCENARIOS and s.hook == "patient-view"]
    chosen: list[dict[str, Any]] = []
    seen: set[bytes] = set()
    for spec in ordered:
        if spec.prefetch_errors:
            continue
        for short in spec.raw.get("resources", []):
            key = orjson.dumps(short, option=orjson.OPT_SORT_KEYS)
            if key in seen:
                continue
            seen.add(key)
            chosen.append(short)
            trial = _spec("bench-probe", [*chosen])
            if _count(_filtered_prefetch(trial, templates, today)) >= target:
                return chosen
    return chosen


def _filler(count: int) -> list[dict[str, Any]]:
    """`count` resources no RPL rule looks at, deterministic, spread over types and five years."""
    kinds = [kind for kind, share in _MIX for _ in range(share)]
    shorts = []
    for n in range(count):
        kind = kinds[(n * 37) % len(kinds)]
        day = f"today-{(n * 7919) % 1826 + 1}d"
        shorts.append(_filler_one(kind, n, day))
    return shorts


def _filler_one(kind: str, n: int, day: str) -> dict[str, Any]:
    if kind == "Observation":
        loinc, local, value, unit, category = _OBSERVATIONS[n % len(_OBSERVATIONS)]
        return {
            "resourceType": kind,
            "code": [f"{LOINC}|{loinc}", f"{FILLER_SYSTEM}|{local}"],
            "date": f"{day}T09:{n % 60:02d}:00Z",
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                            "code": category,
                        }
                    ]
                }
            ],
            "valueQuantity": {
                "value": round(value * (0.9 + (n % 21) / 100), 1),
                "unit": unit,
                "system": "http://unitsofmeasure.org",
                "code": unit,
            },
        }
    if kind == "Condition":
        code = _CONDITIONS[n % len(_CONDITIONS)]
        return {
            "resourceType": kind,
            "code": [f"{ICD10}|{code}", f"{FILLER_SYSTEM}|cond-{code}"],
            "date": day,
            "clinicalStatus": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                        "code": "resolved" if n % 3 else "active",
                    }
                ]
            },
        }
    if kind == "MedicationRequest":
        rxnorm, text = _MEDICATIONS[n % len(_MEDICATIONS)]
        return {
            "resourceType": kind,
            "code": f"{RXNORM}|{rxnorm}",
            "text": text,
            "date": day,
            "status": "completed" if n % 4 else "active",
            "dosageInstruction": [{"text": "as directed"}],
        }
    if kind == "Procedure":
        return {"resourceType": kind, "code": f"{SNOMED}|{_PROCEDURES[n % 3]}", "date": day}
    panel = _PANELS[n % len(_PANELS)]
    return {"resourceType": kind, "code": f"{LOINC}|{panel}", "date": day}


def _spec(patient_id: str, shorts: Sequence[Mapping[str, Any]], **raw: Any) -> ScenarioSpec:
    document = {
        "id": patient_id,
        "description": "load benchmark patient",
        "gender": "female",
        "birthDate": "today-34a",
        "resources": list(shorts),
        "expect": {"eshre": []},
        **raw,
    }
    return ScenarioSpec(patient_id, document["description"], document)


def _filtered_prefetch(
    spec: ScenarioSpec, templates: Mapping[str, str], today: date
) -> dict[str, Any]:
    answer = record_answer(spec.resources(today))
    return build_prefetch(templates, hook_context(spec, today), today, answer)


def _unfiltered_prefetch(
    spec: ScenarioSpec, templates: Mapping[str, str], today: date
) -> dict[str, Any]:
    """Every query answered with all of the patient's resources of its type: an EHR that
    ignores the code filters (and dates, statuses) in the templates."""
    resources = spec.resources(today)

    def answer(query: str) -> dict[str, Any] | None:
        path = query.partition("?")[0].strip("/")
        kind, _, read_id = path.partition("/")
        if read_id:
            return next((r for r in resources if r["resourceType"] == kind), None)
        return searchset([r for r in resources if r["resourceType"] == kind])

    return build_prefetch(templates, hook_context(spec, today), today, answer)


def _count(prefetch: Mapping[str, Any]) -> int:
    total = 0
    for value in prefetch.values():
        if isinstance(value, dict):
            total += len(value.get("entry", [])) if value["resourceType"] == "Bundle" else 1
    return total


def _encode(body: Mapping[str, Any]) -> bytes:
    return orjson.dumps(body)


@dataclass(frozen=True)
class Patients:
    """The benchmark's patients: one spec per size (ids `bench-rpl-<size>`), for the bodies and
    for loading into a FHIR server."""

    base: list[dict[str, Any]]
    specs: dict[int, ScenarioSpec]

    def resources(self, today: date) -> list[dict[str, Any]]:
        return [r for spec in self.specs.values() for r in spec.resources(today)]


def make_patients(templates: Mapping[str, str], today: date) -> Patients:
    """`templates`: the patient-view service's prefetch templates (from discovery)."""
    base = _base_shorts(templates, today, BASE_TARGET)
    base_spec = _spec(f"bench-rpl-{SIZES[0]}", base)
    specs = {SIZES[0]: base_spec}
    for size in SIZES[1:]:
        # The unfiltered prefetch holds the Patient, the base record and the filler.
        specs[size] = _spec(f"bench-rpl-{size}", [*base, *_filler(size - 1 - len(base))])
    return Patients(base, specs)


def build_bodies(
    services: Sequence[Mapping[str, Any]], patients: Patients, today: date
) -> list[Body]:
    """pv-<size> for each size and order-sign-3, from the discovered services."""
    view = service_for_hook(services, "patient-view")
    sign = service_for_hook(services, "order-sign")
    bodies = []
    for size, spec in patients.specs.items():
        body = scenario_request(spec, view, today, prefetch=None)
        make = _filtered_prefetch if size == SIZES[0] else _unfiltered_prefetch
        body["prefetch"] = make(spec, view["prefetch"], today)
        bodies.append(
            Body(f"pv-{size}", view["id"], "patient-view", _count(body["prefetch"]), _encode(body))
        )
    order_spec = _spec(
        patients.specs[SIZES[0]].id,
        patients.base,
        hook="order-sign",
        draftOrders=list(DRAFT_ORDERS),
    )
    body = scenario_request(order_spec, sign, today, prefetch="record")
    bodies.append(
        Body(
            f"order-sign-{len(DRAFT_ORDERS)}",
            sign["id"],
            "order-sign",
            _count(body["prefetch"]),
            _encode(body),
        )
    )
    return bodies


def bodies_for(services: Sequence[Mapping[str, Any]], today: date) -> list[Body]:
    """Every body, for the discovered services, with the patients made for them."""
    view = service_for_hook(services, "patient-view")
    return build_bodies(services, make_patients(view["prefetch"], today), today)


def no_prefetch_body(
    services: Sequence[Mapping[str, Any]],
    spec: ScenarioSpec,
    today: date,
    fhir_server: str,
    token: str,
) -> Body:
    """A patient-view call without prefetch: the service reads everything from `fhir_server`."""
    view = service_for_hook(services, "patient-view")
    authorization = {
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": 3600,
        "scope": "patient/*.read",
        "subject": "rpl-cds-bench",
    }
    body = scenario_request(
        spec, view, today, prefetch=None, fhirServer=fhir_server, fhirAuthorization=authorization
    )
    size = spec.id.rsplit("-", 1)[-1]
    return Body(f"nopf-{size}", view["id"], "patient-view", 0, _encode(body))
