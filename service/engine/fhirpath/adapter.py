"""fhirpathpy's internals, typed, in one place: the rest of the engine reaches the library only
through this module, so an upgrade (or another evaluator) touches one file.

fhirpathpy is untyped and its internals are not a public API; the annotations below are what the
engine relies on. The strict parse is here too: it drives fhirpathpy's ANTLR grammar directly,
because fhirpathpy's own `parse` recovers from syntax errors silently.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any, cast

from antlr4 import CommonTokenStream, InputStream, Token
from antlr4.error.ErrorListener import ErrorListener
from antlr4.tree.Tree import ParseTreeWalker
from fhirpathpy import __version__ as _version
from fhirpathpy import apply_parsed_path as _apply_parsed_path
from fhirpathpy.engine import param_check_table, util
from fhirpathpy.engine.evaluators import (
    boolean_literal as _boolean_literal,
)
from fhirpathpy.engine.evaluators import (
    date_time_literal as _date_time_literal,
)
from fhirpathpy.engine.evaluators import identifier as _identifier
from fhirpathpy.engine.evaluators import number_literal as _number_literal
from fhirpathpy.engine.evaluators import quantity_literal as _quantity_literal
from fhirpathpy.engine.evaluators import string_literal as _string_literal
from fhirpathpy.engine.evaluators import time_literal as _time_literal
from fhirpathpy.engine.invocations import invocation_registry
from fhirpathpy.engine.invocations.existence import distinct_fn
from fhirpathpy.engine.nodes import FP_DateTime, FP_Quantity
from fhirpathpy.parser import parse as _parse
from fhirpathpy.parser.ASTPathListener import ASTPathListener
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

Items = list[Any]
Node = Mapping[str, Any]
Literal = Callable[[Any, Any, Node], Items]

VERSION: str = _version


def _model(version: str) -> dict[str, Any]:
    """One FHIR version's model from fhirpathpy's package data. `fhirpathpy.models` parses all
    four versions it ships (about 6 MB in every worker); the engine reads R4 only (2 MB)."""
    folder = resources.files("fhirpathpy") / "models" / version
    return {
        entry.name.removesuffix(".json"): json.loads(entry.read_text(encoding="utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".json")
    }


R4_MODEL: dict[str, Any] = _model("r4")
# fhirpathpy's own date and quantity values, as they appear in results and function inputs.
DateTimeValue = FP_DateTime
QuantityValue = FP_Quantity

# Built-in functions and operators: name -> fhirpathpy's table entry (fn, arity, ...).
BUILTINS = cast(Mapping[str, Mapping[str, Any]], invocation_registry)
PARAM_CHECKS: Mapping[str, Callable[[Any], Any]] = param_check_table
distinct: Callable[[Any, Items], Items] = distinct_fn
get_data: Callable[[Any], Any] = util.get_data
user_functions: Callable[[Mapping[str, Any]], dict[str, Any]] = util.process_user_invocation_table
_ast_builder: Callable[[], Any] = ASTPathListener
# fhirpathpy's lenient parse (an expression the strict parse accepted parses the same).
parse: Callable[[str], Mapping[str, Any]] = _parse

boolean_literal: Literal = _boolean_literal
date_time_literal: Literal = _date_time_literal
identifier: Literal = _identifier
number_literal: Literal = _number_literal
quantity_literal: Literal = _quantity_literal
string_literal: Literal = _string_literal
time_literal: Literal = _time_literal


def interpreter(tree: Mapping[str, Any], options: Mapping[str, Any]) -> Callable[..., Any]:
    """fhirpathpy's own evaluator of a parse tree, with the R4 model (so `effective` finds
    `effectiveDateTime`): `evaluate(resource, environment)`."""
    set_paths: Callable[..., Callable[..., Any]] = util.set_paths
    return set_paths(_apply_parsed_path, tree, R4_MODEL, dict(options))


class _CollectingListener(ErrorListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.errors: list[str] = []

    def syntaxError(
        self, recognizer: Any, offendingSymbol: Any, line: int, column: int, msg: str, e: Any
    ) -> None:
        self.errors.append(f"column {column + 1}: {msg}")


def parse_strict(expression: str) -> tuple[dict[str, Any], list[str]]:
    """fhirpathpy's parse tree of the expression, and the syntax errors (none when it is valid)."""
    listener = _CollectingListener()
    lexer = FHIRPathLexer(InputStream(expression))
    lexer.removeErrorListeners()
    lexer.addErrorListener(listener)
    tokens = CommonTokenStream(lexer)
    parser = FHIRPathParser(tokens)
    parser.removeErrorListeners()
    parser.addErrorListener(listener)
    tree = parser.expression()
    if not listener.errors and tokens.LA(1) != Token.EOF:
        listener.errors.append(f"unexpected text after column {tokens.LT(1).start}")
    if listener.errors:
        return {}, listener.errors
    builder = _ast_builder()
    ParseTreeWalker().walk(builder, tree)
    return cast(dict[str, Any], builder.parentStack[0]), []
