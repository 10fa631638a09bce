"""FHIRPath compilation, strict, and the one place that chooses an expression's evaluator.

fhirpathpy's parser recovers from syntax errors silently (`Condition.where(` compiles and fails,
or worse answers, only when evaluated), so knowledge would load with broken expressions. The
strict parse (`adapter.parse_strict`) collects what ANTLR reports and insists that the whole text
was consumed. The parse tree is compiled to closures (`closures.py`: fhirpathpy's interpreter
costs most of a hook call), or, for what that compiler does not cover, handed to fhirpathpy's
evaluator with the R4 model (so `effective` finds `effectiveDateTime`). Built-ins that answer
wrongly (`single()` returns an error as a value) are replaced.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import cached_property
from typing import Any

from service.engine.fhirpath.adapter import R4_MODEL, interpreter, parse, parse_strict
from service.engine.fhirpath.closures import Evaluator, Model, Unsupported, compile_closures
from service.engine.knowledge_cache import KnowledgeCache

_R4 = Model(R4_MODEL)


def _resource_types(parents: Mapping[str, str | None]) -> frozenset[str]:
    def is_resource(name: str | None) -> bool:
        while name is not None and name != "Resource":
            name = parents.get(name)
        return name == "Resource"

    return frozenset(name for name in parents if name != "Resource" and is_resource(name))


RESOURCE_TYPES = _resource_types(R4_MODEL["type2Parent"])

# `%name` outside string literals and backtick-quoted identifiers.
_STRINGS = re.compile(r"'(?:[^'\\]|\\.)*'|`[^`]*`")
_VARIABLE = re.compile(r"%([A-Za-z_][A-Za-z0-9_]*)")

# Environment variables the FHIRPath specification defines that the engine binds.
# (%resource and %rootResource are not: an engine evaluation has no single focus resource.)
BUILTIN_VARIABLES = frozenset({"ucum", "sct", "loinc"})


class ExpressionError(ValueError):
    """The expression is not valid FHIRPath."""


def referenced_variables(expression: str) -> set[str]:
    return set(_VARIABLE.findall(_STRINGS.sub("''", expression)))


def plain(value: Any) -> Any:
    """FHIRPath results as JSON values: fhirpathpy hands back its own date types for literals and
    Decimal for decimals (also inside the resources it returns), neither of which belongs in a
    card or a trace."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, float):
        # As for a Decimal: fhirpathpy reads JSON numbers as Decimal, the closures leave them.
        return int(value) if value.is_integer() else value
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    if isinstance(value, str | int | bool) or value is None:
        return value
    return str(value)


# Items the closures return unchanged from the request's JSON, or computed: already JSON values.
_JSON_ITEMS = frozenset({str, dict, bool, int})


@dataclass(frozen=True)
class CompiledExpression:
    text: str
    variables: frozenset[str]
    _evaluate: Evaluator
    # "closures", or "fhirpathpy" for an expression the closure compiler does not cover.
    evaluator: str
    _options: Mapping[str, Any]

    def __call__(self, resource: Any, environment: Mapping[str, Any]) -> list[Any]:
        """The result as FHIRPath values (Decimal for decimals, fhirpathpy's types for dates and
        quantities)."""
        return self._evaluate(resource, environment)

    def values(self, resource: Any, environment: Mapping[str, Any]) -> list[Any]:
        """The result as JSON values (see `plain`). The closures return the request's objects
        unchanged, so only their top-level items need converting; fhirpathpy's copies can hold
        Decimals anywhere."""
        result = self(resource, environment)
        if self.evaluator == "closures":
            return [item if type(item) in _JSON_ITEMS else plain(item) for item in result]
        return [plain(item) for item in result]

    def reference(self, resource: Any, environment: Mapping[str, Any]) -> list[Any]:
        """The same expression evaluated by fhirpathpy's interpreter (for comparisons)."""
        result: list[Any] = self._reference(resource, dict(environment))
        return result

    @cached_property
    def _reference(self) -> Callable[..., Any]:
        # Parsed again, once, on first use: a served worker keeps no parse trees (about 10 MB
        # for the bundled knowledge), and what the strict parse accepted parses the same here.
        return interpreter(parse(self.text), self._options)


def _single(inputs: list[Any]) -> list[Any]:
    # fhirpathpy's single() returns an error *value* for several items, so that
    # `x.single().exists()` is true; the specification says it is an error.
    if len(inputs) > 1:
        raise ExpressionError(f"single() called on {len(inputs)} items")
    return inputs


# Replacements for fhirpathpy built-ins that disagree with the FHIRPath specification; user
# functions take precedence over built-ins, so these apply to every compiled expression.
CORRECTED_BUILTINS: Mapping[str, Any] = {"single": {"fn": _single, "arity": {0: []}}}


def parse_expression(expression: str, cache: KnowledgeCache | None = None) -> Mapping[str, Any]:
    """fhirpathpy's parse tree of a valid expression (strict: ExpressionError otherwise).
    `cache`: parse trees from earlier starts (knowledge_cache.py), and where new ones go."""
    tree = cache.tree(expression) if cache is not None else None
    if tree is None:
        tree, errors = parse_strict(expression)
        if errors:
            raise ExpressionError("; ".join(errors))
        if cache is not None:
            cache.add_tree(expression, tree)
    return tree


def compile_expression(
    expression: str,
    functions: Mapping[str, Any] | None = None,
    cache: KnowledgeCache | None = None,
    tree: Mapping[str, Any] | None = None,
) -> CompiledExpression:
    """`tree`: the expression's parse tree when the caller has it (parse_expression) already.
    The compiled expression does not keep it."""
    if tree is None:
        tree = parse_expression(expression, cache)
    table = {**CORRECTED_BUILTINS, **(functions or {})}
    options = {"userInvocationTable": table}
    evaluator = "closures"
    try:
        evaluate = compile_closures(tree, _R4, table)
    except Unsupported:
        evaluator = "fhirpathpy"
        evaluate = interpreter(tree, options)
    variables = frozenset(referenced_variables(expression))
    return CompiledExpression(expression, variables, evaluate, evaluator, options)
