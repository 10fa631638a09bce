"""FHIRPath compilation, strict.

fhirpathpy's parser recovers from syntax errors silently (`Condition.where(` compiles and fails,
or worse answers, only when evaluated), so knowledge would load with broken expressions. This
module parses with an error listener that collects what ANTLR reports and insists that the whole
text was consumed, then compiles once with the R4 model (so `effective` finds `effectiveDateTime`).
Built-ins that answer wrongly (`single()` returns an error as a value) are replaced.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import fhirpathpy
from antlr4 import CommonTokenStream, InputStream, Token
from antlr4.error.ErrorListener import ErrorListener
from fhirpathpy.models import models
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

R4_MODEL: dict[str, Any] = models["r4"]

# `%name` outside string literals and backtick-quoted identifiers.
_STRINGS = re.compile(r"'(?:[^'\\]|\\.)*'|`[^`]*`")
_VARIABLE = re.compile(r"%([A-Za-z_][A-Za-z0-9_]*)")

# Environment variables the FHIRPath specification defines that the engine binds.
# (%resource and %rootResource are not: an engine evaluation has no single focus resource.)
BUILTIN_VARIABLES = frozenset({"ucum", "sct", "loinc"})


class ExpressionError(ValueError):
    """The expression is not valid FHIRPath."""


class _CollectingListener(ErrorListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.errors: list[str] = []

    def syntaxError(
        self, recognizer: Any, offendingSymbol: Any, line: int, column: int, msg: str, e: Any
    ) -> None:
        self.errors.append(f"column {column + 1}: {msg}")


def syntax_errors(expression: str) -> list[str]:
    listener = _CollectingListener()
    lexer = FHIRPathLexer(InputStream(expression))
    lexer.removeErrorListeners()
    lexer.addErrorListener(listener)
    tokens = CommonTokenStream(lexer)
    parser = FHIRPathParser(tokens)
    parser.removeErrorListeners()
    parser.addErrorListener(listener)
    parser.expression()
    if not listener.errors and tokens.LA(1) != Token.EOF:
        listener.errors.append(f"unexpected text after column {tokens.LT(1).start}")
    return listener.errors


def referenced_variables(expression: str) -> set[str]:
    return set(_VARIABLE.findall(_STRINGS.sub("''", expression)))


Evaluator = Callable[[Any, Mapping[str, Any]], list[Any]]


@dataclass(frozen=True)
class CompiledExpression:
    text: str
    variables: frozenset[str]
    _evaluate: Evaluator

    def __call__(self, resource: Any, environment: Mapping[str, Any]) -> list[Any]:
        return self._evaluate(resource, environment)


def _single(inputs: list[Any]) -> list[Any]:
    # fhirpathpy's single() returns an error *value* for several items, so that
    # `x.single().exists()` is true; the specification says it is an error.
    if len(inputs) > 1:
        raise ExpressionError(f"single() called on {len(inputs)} items")
    return inputs


# Replacements for fhirpathpy built-ins that disagree with the FHIRPath specification; user
# functions take precedence over built-ins, so these apply to every compiled expression.
CORRECTED_BUILTINS: Mapping[str, Any] = {"single": {"fn": _single, "arity": {0: []}}}


def compile_expression(
    expression: str, functions: Mapping[str, Any] | None = None
) -> CompiledExpression:
    errors = syntax_errors(expression)
    if errors:
        raise ExpressionError("; ".join(errors))
    options = {"userInvocationTable": {**CORRECTED_BUILTINS, **(functions or {})}}
    evaluate = fhirpathpy.compile(expression, R4_MODEL, options)
    return CompiledExpression(expression, frozenset(referenced_variables(expression)), evaluate)
