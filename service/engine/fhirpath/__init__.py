"""FHIRPath for the engine: strict compilation, the closure evaluator, the engine's functions.

fhirpathpy's internals are reached only through `adapter.py`; which evaluator runs an expression
(closures, or fhirpathpy's interpreter for what they do not cover) is chosen in `expression.py`.
"""

from service.engine.fhirpath.expression import (
    BUILTIN_VARIABLES,
    RESOURCE_TYPES,
    CompiledExpression,
    ExpressionError,
    compile_expression,
    parse_expression,
    plain,
)

__all__ = [
    "BUILTIN_VARIABLES",
    "RESOURCE_TYPES",
    "CompiledExpression",
    "ExpressionError",
    "compile_expression",
    "parse_expression",
    "plain",
]
