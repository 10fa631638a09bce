"""The static check the knowledge loader runs on every expression, before any patient data
arrives: unknown functions (neither fhirpathpy's nor the engine's), wrong numbers of arguments,
literal ValueSet urls that are not loaded or cannot be expanded, literal units no unit table
mentions."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from service.engine.fhirpath import adapter
from service.engine.fhirpath.functions import SIGNATURES
from service.engine.terminology import Terminology
from service.engine.units import UnitTable

# Standard FHIRPath functions fhirpathpy does not implement, with what to write instead.
_INSTEAD = {
    "memberOf": "use inValueSet(url)",
    "resolve": "not available; bind the referenced resources to a variable",
    "subsumes": "not available; list the codes in a ValueSet and use inValueSet(url)",
    "subsumedBy": "not available; list the codes in a ValueSet and use inValueSet(url)",
}


def check_expression(
    expression: str | Mapping[str, Any], terminology: Terminology, units: UnitTable
) -> list[str]:
    """Problems an author can fix before any patient data arrives; empty when none is found.
    `expression`: the text, or its parse tree (`parse_expression`).

    Syntax errors are not reported here (fhirpathpy's parser recovers silently; the strict parse
    in `expression.py` reports them)."""
    problems: list[str] = []
    tree = adapter.parse(expression) if isinstance(expression, str) else expression
    for name, params in _calls(tree):
        spec = SIGNATURES.get(name)
        builtin = adapter.BUILTINS.get(name)
        if spec is None:
            if builtin is None:
                hint = _INSTEAD.get(name, "neither a fhirpathpy nor an engine function")
                problems.append(f"unknown function {name}(): {hint}")
                continue
            if name == "trace" or "variadic" in builtin:
                continue  # fhirpathpy accepts any number of arguments for these
            spec = builtin.get("arity", {0: []})
        if len(params) not in spec:
            expected = " or ".join(str(n) for n in sorted(spec))
            problems.append(f"{name}() takes {expected} argument(s), got {len(params)}")
            continue
        literal = _string_literal(params[0]) if params else None
        if literal is None:
            continue  # computed arguments can only be checked when evaluated
        if name == "inValueSet" and not terminology.knows(literal):
            problems.append(
                f"inValueSet('{literal}'): no such ValueSet is loaded, or it cannot be expanded"
            )
        if name in ("quantityIn", "convertibleTo") and not units.knows(literal):
            problems.append(
                f"{name}('{literal}'): unit '{literal}' is in no unit table (*.units.json); "
                "units are case-sensitive UCUM codes, list it under 'units' if it needs no "
                "conversion"
            )
    return problems


def _calls(node: Mapping[str, Any]) -> Iterator[tuple[str, list[Mapping[str, Any]]]]:
    if node.get("type") == "FunctionInvocation":
        function = node["children"][0]
        identifier, *rest = function["children"]
        params = list(rest[0].get("children", [])) if rest else []
        yield str(identifier["text"]).strip("`"), params
    for child in node.get("children", []):
        if isinstance(child, Mapping):
            yield from _calls(child)


def _string_literal(node: Mapping[str, Any]) -> str | None:
    # A literal argument parses as TermExpression > LiteralTerm > StringLiteral.
    while node.get("type") in ("TermExpression", "LiteralTerm") and len(node["children"]) == 1:
        node = node["children"][0]
    if node.get("type") != "StringLiteral":
        return None
    return str(adapter.string_literal(None, None, node)[0])
