"""The closure compiler (service/engine/fhirpath/closures.py) against fhirpathpy's interpreter.

The closures evaluate every knowledge expression; fhirpathpy is the reference. Every expression
the bundled knowledge evaluates over every clinical scenario (each hook, each profile) must give
the same result through both, or fail through both. The semantics where the compiler knowingly
differs (documented in its module docstring) are pinned by the tests after that.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from fhirpathpy.models import models as fhirpathpy_models
from support.scenario_calls import ProfileApps, scenario_request, service_for_hook

from service.authoring.synthetic import load_scenarios, profiles
from service.engine.fhirpath import CompiledExpression, compile_expression, plain
from service.engine.fhirpath.adapter import R4_MODEL
from service.engine.fhirpath.functions import engine_functions
from service.engine.knowledge import load_knowledge
from service.settings import data_root

SCENARIOS = load_scenarios(data_root() / "scenarios")
PROFILES = profiles()
KNOWLEDGE = load_knowledge([data_root() / "plandefinitions", data_root() / "mappings"])
FUNCTIONS = KNOWLEDGE.functions


class Disagreements:
    """Records each evaluation's result through both evaluators where they differ."""

    def __init__(self) -> None:
        self.evaluations = 0
        self.found: list[str] = []

    def compare(self, expression: CompiledExpression, resource: Any, env: Any) -> list[Any]:
        self.evaluations += 1
        fast, fast_error = _outcome(lambda: expression._evaluate(resource, env))
        slow, slow_error = _outcome(lambda: expression.reference(resource, env))
        if (fast_error is None) != (slow_error is None) or plain(fast) != plain(slow):
            self.found.append(
                f"{expression.text[:200]}\n  closures:   {fast_error or plain(fast)!r:.300}"
                f"\n  fhirpathpy: {slow_error or plain(slow)!r:.300}"
            )
        if fast_error is not None:
            raise fast_error
        return fast


def _outcome(evaluate: Any) -> tuple[list[Any], Exception | None]:
    try:
        return evaluate(), None
    except Exception as error:  # both evaluators raise many types
        return [], error


@pytest.fixture(scope="module")
def disagreements() -> Iterator[Disagreements]:
    patch = pytest.MonkeyPatch()
    recorder = Disagreements()

    def call(expression: CompiledExpression, resource: Any, env: Any) -> list[Any]:
        return recorder.compare(expression, resource, env)

    patch.setattr(CompiledExpression, "__call__", call)  # what values() evaluates
    yield recorder
    patch.undo()


@pytest.fixture(scope="module")
async def apps(
    tmp_path_factory: pytest.TempPathFactory, disagreements: Disagreements
) -> AsyncIterator[ProfileApps]:
    async with AsyncExitStack() as stack:
        yield ProfileApps(stack, tmp_path_factory)


def test_every_knowledge_expression_is_compiled_to_closures() -> None:
    interpreted = [
        expression.text
        for plan in KNOWLEDGE.plans
        for expression in _expressions(plan)
        if expression.evaluator != "closures"
    ]
    assert interpreted == []


def _expressions(node: Any) -> Iterator[CompiledExpression]:
    if isinstance(node, CompiledExpression):
        yield node
    elif isinstance(node, list | tuple):
        for item in node:
            yield from _expressions(item)
    elif hasattr(node, "__dataclass_fields__"):
        for name in node.__dataclass_fields__:
            yield from _expressions(getattr(node, name))


async def test_closures_agree_with_fhirpathpy_over_every_scenario(
    apps: ProfileApps, disagreements: Disagreements
) -> None:
    today = datetime.now(UTC).date()
    for profile in PROFILES:
        client, discovery = await apps.get(profile)
        for spec in SCENARIOS:
            service = service_for_hook(discovery, spec.hook)
            body = scenario_request(spec, service, today)
            response = await client.post(f"/cds-services/{service['id']}", json=body)
            assert response.status_code == 200, f"{spec.id}: {response.text}"
    assert disagreements.evaluations > 10_000  # every scenario, not a handful
    assert disagreements.found == [], "\n".join(sorted(set(disagreements.found))[:20])


# The semantics where the compiler differs from fhirpathpy's interpreter, and a few it must share.


def both(text: str, env: dict[str, Any], resource: Any = None) -> tuple[Any, Any]:
    expression = compile_expression(text, FUNCTIONS)
    assert expression.evaluator == "closures"
    return plain(expression(resource or {}, env)), plain(expression.reference(resource or {}, env))


def test_this_is_lexically_scoped() -> None:
    # fhirpathpy evaluates the argument of combine() against the last item where() saw.
    env = {"a": [{"x": 1}, {"x": 2}]}
    closures, fhirpathpy = both("%a.where(x > 0).count().combine(x)", env, resource={"x": 9})
    assert closures == [2, 9]
    assert fhirpathpy == [2, 2]


def test_where_keeps_an_item_only_when_the_criteria_are_true() -> None:
    env = {"a": [{"flag": False, "n": 1}, {"flag": True, "n": 2}]}
    closures, fhirpathpy = both("%a.where(flag).n", env)
    assert closures == [2]
    assert fhirpathpy == [1, 2]  # a boolean element read from data is truthy to fhirpathpy


def test_a_choice_element_is_found_on_an_object_without_a_type_path() -> None:
    env = {"answers": [{"valueString": "yes"}]}
    closures, fhirpathpy = both("%answers.value", env)
    assert closures == ["yes"]
    assert fhirpathpy == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("%obs.value.quantityIn('m[IU]/L')", [5]),
        ("%obs.effective.substring(0, 4)", ["2024"]),
        ("%obs.where(status in ('final' | 'amended')).count()", [1]),
        ("%obs.status | %obs.status | 'x'", ["final", "x"]),
        ("%nums.aggregate(iif($total.empty() or $this < $total, $this, $total))", [2]),
        ("%nums.aggregate($this + $total, 0)", [12]),
        ("%nums.select($this * 2)", [6, 4, 14]),
        ("%nums.where($this > 2).exists() and %nothing.empty()", [True]),
        ("%nothing.exists() or %nums.first() = 3", [True]),
        ("%nothing.first() = 3", []),
        ("(%today.toDate() + 6 weeks).toString()", ["2024-07-15"]),
        ("%obs.effective.toDate() + 84 days", ["2024-06-03"]),
        ("iif(%nums.count() > 2, 'many', 'few') + ': ' + %nums.count().toString()", ["many: 3"]),
        ("%names.join(', ') & '.'", ["b, a, b."]),
        ("%names.distinct().count()", [2]),
        ("%obs.clinicalDate().daysBetween(%today)", [84]),
        ("-%nums.first()", [-3]),
        ("%obs.status.not()", [False]),
        ("%flag.not()", [True]),
        ("%nums[1]", [2]),
        ("%obs.effective.lower().contains('2024-03')", [True]),
        ("2.5.round(0)", [2]),
        ("%obs.value.value / 2", [Decimal("2.5")]),
    ],
)
def test_closures_and_fhirpathpy_agree(text: str, expected: list[Any]) -> None:
    env = {
        "obs": [
            {
                "resourceType": "Observation",
                "status": "final",
                "effectiveDateTime": "2024-03-11",
                "valueQuantity": {"value": 5.0, "unit": "mIU/L"},
            }
        ],
        "nums": [3, 2, 7],
        "names": ["b", "a", "b"],
        "nothing": [],
        "flag": [False],
        "today": "2024-06-03",
    }
    closures, fhirpathpy = both(text, env)
    assert closures == fhirpathpy == plain(expected)


@pytest.mark.parametrize(
    "item",
    [
        {"status": "final"},
        {"status": "preliminary"},
        {"status": ["final"]},  # a list: navigated as the general where does
        {"status": "final", "_status": {"extension": []}},  # two items for `in`: an error
        {"_status": {"extension": []}},
        {"status": None},
        {"status": 1},
        {"code": "final"},
        "final",
    ],
)
@pytest.mark.parametrize(
    "criteria", ["status in ('final' | 'amended')", "status = 'final'", "status = 'amended'"]
)
def test_where_in_strings_selects_as_the_general_where(item: Any, criteria: str) -> None:
    # `where(status in (...))` and `where(status = '...')` are selected by a set lookup; in
    # parentheses they are not.
    direct = compile_expression(f"%a.where({criteria})", FUNCTIONS)
    general = compile_expression(f"%a.where(({criteria}))", FUNCTIONS)
    env = {"a": [{"status": "amended", "id": "1"}, item]}
    (selected, error), (expected, expected_error) = (
        _outcome(lambda: direct({}, env)),
        _outcome(lambda: general({}, env)),
    )
    assert selected == expected
    assert repr(error) == repr(expected_error)


HEPARIN = "https://fhir.rpl-cds.org/ValueSet/heparin"
ORAL = "https://fhir.rpl-cds.org/ValueSet/oral-anticoagulant"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


@pytest.mark.parametrize(
    "item",
    [
        {"medicationCodeableConcept": {"text": "Enoxaparin 40 mg"}},  # by text (first ValueSet)
        {"medicationCodeableConcept": {"text": "Apixaban 5 mg"}},  # by text (second ValueSet)
        {"medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "243670"}]}},
        {"medicationCodeableConcept": {"coding": [{"code": "67108"}], "text": "x"}},  # no system
        {"medicationCodeableConcept": {"coding": [{"system": RXNORM, "display": "Warfarin"}]}},
        {"medicationReference": {"reference": "Medication/1"}},  # not a concept: undecided
        {"medicationCodeableConcept": [{"text": "aspirin"}, {"text": "heparin"}]},  # a list
        {"_medicationCodeableConcept": {"extension": []}},
        {"medication": {"text": "dalteparin"}},  # the element under its plain name
        {"medicationCodeableConcept": "heparin"},  # a string: a bare code
        {"medicationCodeableConcept": {"resourceType": "Medication"}},  # a resource: an error
        {"status": "active"},
        "heparin",
    ],
)
def test_where_member_of_selects_as_the_general_where(item: Any) -> None:
    # `where(x.inValueSet(a) or x.inValueSet(b))` calls the function per item directly; in
    # parentheses it is the general where.
    criteria = f"medication.inValueSet('{HEPARIN}') or medication.inValueSet('{ORAL}')"
    direct = compile_expression(f"%a.where({criteria})", FUNCTIONS)
    general = compile_expression(f"%a.where(({criteria}))", FUNCTIONS)
    env = {"a": [{"medicationCodeableConcept": {"text": "Clexane"}, "id": "1"}, item]}
    (selected, error), (expected, expected_error) = (
        _outcome(lambda: direct({}, env)),
        _outcome(lambda: general({}, env)),
    )
    assert selected == expected
    assert repr(error) == repr(expected_error)
    assert error is not None or selected[0]["id"] == "1"  # the first item is an enoxaparin


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("%a.first() + %b", "Cannot ['x'] + [1]"),  # a string plus a number
        ("%a.single()", "single() called on 2 items"),  # several items
        ("%b and true", "Expected boolean, got: 1"),  # not a boolean
        # substring of a collection, before the comparison of a string with a number
        ("%a.substring(0, 1) < 5", "Expected string, but got ['x', 'y']"),
        ("%undefined", "undefined environment variable: undefined"),
    ],
)
def test_both_fail_alike(text: str, error: str) -> None:
    expression = compile_expression(text, FUNCTIONS)
    env = {"a": ["x", "y"], "b": [1]}
    # fhirpathpy raises bare Exceptions: the message is what identifies the error.
    with pytest.raises(Exception, match=re.escape(error)):
        expression({}, env)
    with pytest.raises(Exception, match=re.escape(error)):
        expression.reference({}, env)


def test_what_the_compiler_does_not_cover_is_interpreted_by_fhirpathpy() -> None:
    expression = compile_expression("%a.select($index)", FUNCTIONS)
    assert expression.evaluator == "fhirpathpy"
    assert expression({}, {"a": ["x", "y"]}) == [0, 1]


def test_the_r4_model_is_fhirpathpys_own() -> None:
    # The adapter reads only R4 from fhirpathpy's package data; it must be what fhirpathpy
    # itself loads.
    assert fhirpathpy_models["r4"] == R4_MODEL
    assert set(R4_MODEL) >= {"choiceTypePaths", "path2Type", "type2Parent"}


def test_a_concept_asked_again_gets_the_verdict_a_fresh_decision_gives() -> None:
    # inValueSet remembers concepts by content (text, and each coding's system, code and
    # display); whatever the order of asking, a remembered verdict is the one a table that has
    # never seen the concept decides.
    def concept(display: str | None = None, text: str | None = None, code: str = "0") -> Any:
        coding = {"system": RXNORM, "code": code}
        if display is not None:
            coding["display"] = display
        return {"coding": [coding], **({"text": text} if text is not None else {})}

    asked = [
        (HEPARIN, concept(display="Enoxaparin 40 mg")),  # a member by its display
        (HEPARIN, concept(display="Amoxicillin 500 mg")),  # the same code, another display
        (HEPARIN, concept(text="enoxaparin")),  # by its text
        (HEPARIN, concept()),  # decided by the code alone: not a member
        (HEPARIN, {"coding": [{"code": "67108"}]}),  # no system: the text patterns decide
        (ORAL, concept(display="Enoxaparin 40 mg")),  # the same concept, another ValueSet
        (HEPARIN, {"coding": [{"system": RXNORM, "code": ["0"]}]}),  # not a plain shape
    ]
    seen = compile_expression("%c.inValueSet(%url)", FUNCTIONS)
    for _ in range(2):
        for url, item in [*asked, *reversed(asked)]:
            fresh = engine_functions(KNOWLEDGE.terminology, KNOWLEDGE.units)  # nothing seen
            expected = compile_expression("%c.inValueSet(%url)", fresh)
            env = {"c": [dict(item)], "url": url}
            assert seen({}, env) == expected({}, env), (url, item)
    verdicts = [seen({}, {"c": [item], "url": url}) for url, item in asked]
    assert verdicts[:6] == [[True], [False], [True], [False], [False], [False]]
