"""FHIRPath compiled to Python closures: the evaluation path of every knowledge expression.

Why not fhirpathpy's own evaluator: it interprets its parse tree on every evaluation, and per node
pays a dispatch through a dict of evaluators, a merge of the whole function registry (per
function call), a regular expression (per identifier) and a wrapper object (per navigated
element). The RPL workup evaluates about 120 expressions per hook call, and interpretation was
about 90% of the call (issue 6: 20 of 22 ms). Here fhirpathpy's parse tree is walked once, at
load, into nested closures; evaluation runs only the operations.

What stays fhirpathpy's: the parser, the literals, and the operator and function library.
`substring`, `toDate`, `join`, `&`, `-`, ... are fhirpathpy's own functions, called with the
arguments its interpreter would pass them (parameters type-checked the same way, empty
propagation by the same `nullable` flags); `=`, `!=`, `<`, `>`, `<=`, `>=`, `+` compute two plain
singletons (strings, numbers, booleans) here as fhirpathpy would and hand anything else to it.
Implemented here: the tree walk, navigation, `%variables`, `$this` and `$total`, `|` and `in`,
`and` and `or`, and the functions that take expressions (`where`, `select`, `exists`, `iif`,
`aggregate`) or are too trivial to call through the registry (`empty`, `not`, `first`, `count`).
The engine's own functions (functions.py) are called directly.

Values are the plain JSON of the request (fhirpathpy wraps each navigated element with its FHIR
type path). Where that or fhirpathpy's interpreter gives a different answer, this module follows
the FHIRPath specification, and tests/test_fhirpath_closures.py compares both evaluators on every
expression of the bundled knowledge over all scenarios:
- `x and y` does not evaluate `y` when `x` is false, nor `x or y` when `x` is true (FHIRPath
  allows either); fhirpathpy evaluates both, so an error on the right side fails it.
- `$this` is lexically scoped. fhirpathpy keeps the last item a `where` looked at as `$this` for
  the rest of the evaluation, so a later function argument is evaluated against it.
- `where(criteria)` keeps an item when the criteria give `true`; fhirpathpy keeps it when they
  give anything truthy in Python, which includes every element read from the data (a `false`
  boolean element too) and excludes a computed `0` or `''`.
- A choice element (`value`, `effective`, `onset`...) is found by its type suffixes on any object;
  fhirpathpy needs the object's type path and finds nothing on an object without one (such as a
  Coding held in a variable).
- Only top-level items that are primitive-extension stand-ins (`{"extension": [...]}`) are dropped
  from the result; fhirpathpy also drops them inside returned resources.

Anything this compiler does not know (type operators `is`/`as`/`ofType`, `$index`, variadic
functions, `trace`, a function fhirpathpy does not have) raises `Unsupported` at compile time, and
the caller evaluates that expression with fhirpathpy instead.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

import orjson

from service.engine.fhirpath import adapter
from service.engine.fhirpath.adapter import Items, Node

_boolean_literal = adapter.boolean_literal
_date_time_literal = adapter.date_time_literal
_identifier = adapter.identifier
_number_literal = adapter.number_literal
_quantity_literal = adapter.quantity_literal
_string_literal = adapter.string_literal
_time_literal = adapter.time_literal
_get_data = adapter.get_data
_user_functions = adapter.user_functions
_PARAM_CHECKS = adapter.PARAM_CHECKS


class Unsupported(Exception):
    """The expression uses something this compiler does not implement."""


class Scope:
    """What an evaluation step sees besides its input: the variables, `$this`, `$total`, and the
    context dict fhirpathpy's library functions receive."""

    __slots__ = ("ctx", "resource", "this", "total", "variables")

    def __init__(
        self,
        variables: Mapping[str, Any],
        resource: Any,
        this: Items,
        total: Items | None,
        ctx: dict[str, Any],
    ) -> None:
        self.variables = variables
        self.resource = resource
        self.this = this
        self.total = total
        self.ctx = ctx

    def focused(self, this: Items) -> Scope:
        return Scope(self.variables, self.resource, this, self.total, self.ctx)

    def aggregating(self, this: Items, total: Items) -> Scope:
        return Scope(self.variables, self.resource, this, total, self.ctx)


Step = Callable[[Items, Scope], Items]
Evaluator = Callable[[Any, Mapping[str, Any]], Items]
# A parameter as fhirpathpy passes it to a library function: a value, [] or an evaluator.
Param = Callable[[Scope], Any]

_UCUM = "http://unitsofmeasure.org"


def compile_closures(
    tree: Mapping[str, Any], model: Model, functions: Mapping[str, Any]
) -> Evaluator:
    """An evaluator of fhirpathpy's parse tree (`fhirpathpy.parser.parse`) with fhirpathpy's
    calling convention: `(resource, variables) -> items`. `functions` is the user invocation
    table. Raises Unsupported when the expression needs fhirpathpy's interpreter."""
    compiler = _Compiler(model, functions)
    step = compiler.node(tree["children"][0])
    # The model alone, not the compiler: its function registry (a copy per expression) is
    # garbage once the steps are built.
    fhir_model = compiler.model

    def evaluate(resource: Any, variables: Mapping[str, Any]) -> Items:
        root = _arraify(resource)
        ctx = {"vars": variables, "dataRoot": root, "model": fhir_model}
        result = step(root, Scope(variables, resource, root, None, ctx))
        return [item for item in result if not _extension_stand_in(item)]

    return evaluate


class Model:
    """fhirpathpy's model of a FHIR version, with what navigation needs from it: element name ->
    the type suffixes it takes as a choice element anywhere in the model, in the model's order
    (`value` -> Quantity, CodeableConcept, String...)."""

    def __init__(self, model: Mapping[str, Any]) -> None:
        self.model = model
        suffixes: dict[str, dict[str, None]] = {}
        for path, types in model.get("choiceTypePaths", {}).items():
            name = path.rsplit(".", 1)[-1]
            suffixes.setdefault(name, {}).update(dict.fromkeys(types))
        self.choices = {name: tuple(found) for name, found in suffixes.items()}


class _Compiler:
    def __init__(self, model: Model, functions: Mapping[str, Any]) -> None:
        self.model = model.model
        self.user = set(functions)
        self.registry: dict[str, Any] = {**adapter.BUILTINS, **_user_functions(functions)}
        # Called without fhirpathpy's wrapper, which converts float inputs to Decimal: the
        # engine's functions treat the two alike.
        self.direct = {name: entry["fn"] for name, entry in functions.items()}
        self.choices = model.choices

    def node(self, node: Node) -> Step:
        kind = node["type"]
        method = getattr(self, f"_{kind}", None)
        if method is None:
            raise Unsupported(f"{kind} is not compiled")
        step: Step = method(node)
        return step

    # Pass-through nodes

    def _TermExpression(self, node: Node) -> Step:
        return self.node(node["children"][0])

    _InvocationTerm = _TermExpression
    _ParenthesizedTerm = _TermExpression

    def _LiteralTerm(self, node: Node) -> Step:
        term = node["children"][0]
        if not term:
            text = node["text"]
            return lambda focus, scope: [text]
        return self.node(term)

    def _InvocationExpression(self, node: Node) -> Step:
        source, invocation = (self.node(child) for child in node["children"])

        def run(focus: Items, scope: Scope) -> Items:
            return invocation(source(focus, scope), scope)

        return run

    # Literals: evaluated by fhirpathpy once; each evaluation gets its own list.

    def _constant(self, evaluator: Callable[..., Items], node: Node) -> Step:
        return _Constant(evaluator(None, None, node))

    def _StringLiteral(self, node: Node) -> Step:
        return self._constant(_string_literal, node)

    def _NumberLiteral(self, node: Node) -> Step:
        return self._constant(_number_literal, node)

    def _BooleanLiteral(self, node: Node) -> Step:
        return self._constant(_boolean_literal, node)

    def _QuantityLiteral(self, node: Node) -> Step:
        return self._constant(_quantity_literal, node)

    def _NullLiteral(self, node: Node) -> Step:
        return _Constant([])

    def _DateTimeLiteral(self, node: Node) -> Step:
        # fhirpathpy's date objects are not shared between evaluations.
        return lambda focus, scope: _date_time_literal(None, None, node)

    def _TimeLiteral(self, node: Node) -> Step:
        return lambda focus, scope: _time_literal(None, None, node)

    # Variables and the focus

    def _ExternalConstantTerm(self, node: Node) -> Step:
        name = _identifier(None, None, node["children"][0]["children"][0])[0].replace("`", "")

        def run(focus: Items, scope: Scope) -> Items:
            if name in scope.variables:
                value = scope.variables[name]
            elif name == "context":
                value = scope.resource
            elif name == "ucum":
                value = _UCUM
            else:
                raise ValueError(f"Attempting to access an undefined environment variable: {name}")
            if value is None:
                return []
            return value if isinstance(value, list) else [value]

        return run

    def _ThisInvocation(self, node: Node) -> Step:
        return lambda focus, scope: scope.this

    def _TotalInvocation(self, node: Node) -> Step:
        return lambda focus, scope: _arraify(scope.total)

    def _MemberInvocation(self, node: Node) -> Step:  # noqa: C901
        # One compiled step per navigation shape, chosen here once so that evaluation branches
        # on nothing (this is the hot path of every hook call).
        key = _identifier(None, None, node["children"][0])[0].replace("`", "")
        if key[0] == key[0].upper():
            raise Unsupported(f"type name {key} as a path")
        extension_key = f"_{key}"
        choices = tuple((key + suffix, f"_{key}{suffix}") for suffix in self.choices.get(key, ()))

        def run(focus: Items, scope: Scope) -> Items:
            out: Items = []
            for item in focus:
                if type(item) is dict or isinstance(item, Mapping):
                    value, extension = item.get(key), item.get(extension_key)
                    if value is None and extension is None:
                        for name, extension_name in choices:
                            value, extension = item.get(name), item.get(extension_name)
                            if value is not None or extension is not None:
                                break
                    for found in (value, extension):
                        if isinstance(found, list):
                            out.extend(found)
                        elif found is not None:
                            out.append(found)
                elif isinstance(item, adapter.QuantityValue):
                    out.append(item.value)  # as fhirpathpy: whatever the member's name
                elif key == "length":
                    out.append(len(item))
            return out

        return run

    def _IndexerExpression(self, node: Node) -> Step:
        collection, index = (self.node(child) for child in node["children"])

        def run(focus: Items, scope: Scope) -> Items:
            items, position = collection(focus, scope), index(focus, scope)
            if not position:
                return []
            at = int(position[0])
            return [items[at]] if 0 <= at < len(items) else []

        return run

    def _PolarityExpression(self, node: Node) -> Step:
        sign = node["terminalNodeText"][0]
        operand = self.node(node["children"][0])

        def run(focus: Items, scope: Scope) -> Items:
            value = operand(focus, scope)
            if len(value) != 1:
                raise ValueError(f"Unary {sign} can only be applied to an individual number.")
            number = _get_data(value[0])
            if isinstance(number, bool) or not isinstance(number, int | Decimal):
                raise ValueError(f"Unary {sign} can only be applied to a number.")
            return [-number if sign == "-" else number]

        return run

    # Operators: fhirpathpy's implementations, with its parameter handling.

    def _operator(self, node: Node, name: str | None = None) -> Step:
        name = name or node["terminalNodeText"][0]
        entry = self.registry.get(name)
        if entry is None or "fn" not in entry:
            raise Unsupported(f"operator {name}")
        operands = [self.node(child) for child in node["children"]]
        if name in _LOGIC:
            run = _logic(name, operands[0], operands[1])
        else:
            run = self._infix(name, entry, operands[0], operands[1])
        if all(isinstance(operand, _Constant) for operand in operands):
            # `status in ('final' | 'amended')`: the union is the same on every evaluation.
            try:
                return _Constant(run([], Scope({}, None, [], None, {})))
            except Exception:  # fhirpathpy raises many types; the error is the evaluation's
                return run
        return run

    def _infix(self, name: str, entry: Mapping[str, Any], first: Step, second: Step) -> Step:
        """An operator whose operands are evaluated on its input, as fhirpathpy's infix_invoke
        does, then handed to its function (or a faster equivalent)."""
        left_type, right_type = entry["arity"][2]
        function = _FASTER.get(name, entry["fn"])
        nullable = "nullable" in entry
        if left_type == right_type == "Any":  # all but the boolean operators: no conversion

            def run(focus: Items, scope: Scope) -> Items:
                inner = scope.focused(focus) if focus is not scope.this else scope
                a, b = first(focus, inner), second(focus, inner)
                if nullable and (not a or not b):
                    return []
                return _arraify(function(scope.ctx, a, b))

            return run
        left, right = self._param(left_type, first), self._param(right_type, second)

        def run_typed(focus: Items, scope: Scope) -> Items:
            inner = scope.focused(focus) if focus is not scope.this else scope
            a, b = left(inner), right(inner)
            if nullable and (_nullable(a) or _nullable(b)):
                return []
            return _arraify(function(scope.ctx, a, b))

        return run_typed

    _AdditiveExpression = _operator
    _MultiplicativeExpression = _operator
    _InequalityExpression = _operator
    _EqualityExpression = _operator
    _AndExpression = _operator
    _OrExpression = _operator
    _XorExpression = _operator
    _ImpliesExpression = _operator

    def _UnionExpression(self, node: Node) -> Step:
        return self._operator(node, "|")

    def _MembershipExpression(self, node: Node) -> Step:
        operator = node["terminalNodeText"][0]
        return self._operator(node, {"in": "inOp", "contains": "containsOp"}[operator])

    # Functions

    def _FunctionInvocation(self, node: Node) -> Step:
        function = node["children"][0]
        name = _identifier(None, None, function["children"][0])[0]
        params = list(function["children"][1]["children"]) if len(function["children"]) > 1 else []
        if name == "where" and name not in self.user and len(params) == 1:
            selection = self._where_in(params[0]) or self._where_member_of(params[0])
            if selection is not None:
                return selection
        native = None if name in self.user else getattr(self, f"_fn_{name}", None)
        if native is not None:
            step: Step = native([self.node(param) for param in params])
            return step
        return self._library_function(name, params)

    def _where_in(self, criteria: Node) -> Step | None:
        """`where(element in <strings>)` (`status in ('final' | 'amended')`), the most common
        filter of the knowledge, and `where(element = '<string>')`, as a set lookup on each item
        that holds the element as one plain string; any other item goes through the general
        `where`, so the results are the same."""
        operator = criteria["terminalNodeText"]
        if not (
            (criteria["type"] == "MembershipExpression" and operator == ["in"])
            or (criteria["type"] == "EqualityExpression" and operator == ["="])
        ):
            return None
        left, right = criteria["children"]
        key = _member_name(left)
        if key is None or key in self.choices:
            return None
        constant = self.node(right)
        if not isinstance(constant, _Constant) or not all(type(v) is str for v in constant.value):
            return None
        if operator == ["="] and len(constant.value) != 1:
            return None  # `=` against several strings compares collections, not membership
        general = self._fn_where([self.node(criteria)])
        values = frozenset(constant.value)
        extension_key = f"_{key}"

        def run(focus: Items, scope: Scope) -> Items:
            kept = []
            for item in focus:
                if type(item) is dict:
                    value = item.get(key)
                    if type(value) is str and extension_key not in item:
                        if value in values:
                            kept.append(item)
                        continue
                kept.extend(general([item], scope))
            return kept

        return run

    def _where_member_of(self, criteria: Node) -> Step | None:
        """`where(element.inValueSet('<url>') or element.inValueSet('<url>') ...)`, how the
        knowledge picks medicines and orders out of every one on record: each item's elements
        handed to the engine's inValueSet directly, ValueSet by ValueSet until one says true,
        without a FHIRPath scope and an `or` per item (at 5,000 resources this filter cost more
        than the rest of the plan). The element is read by the compiled member step and the
        function decides, so an item is kept exactly when the general `where` keeps it: `or`
        is true only when an operand is true, and stops there as this loop does."""
        tests = self._member_of_tests(criteria)
        in_value_set = self.direct.get("inValueSet")
        if tests is None or in_value_set is None:
            return None

        def run(focus: Items, scope: Scope) -> Items:
            kept = []
            for item in focus:
                this = [item]
                for element, url in tests:
                    values = element(this, scope)
                    if values and in_value_set(values, url) is True:
                        kept.append(item)
                        break
            return kept

        return run

    def _member_of_tests(self, node: Node) -> list[tuple[Step, str]] | None:
        """(element step, ValueSet url) for each operand of an `or` chain of
        `<element>.inValueSet('<url>')`, else None."""
        if node["type"] == "OrExpression" and node["terminalNodeText"] == ["or"]:
            left, right = (self._member_of_tests(child) for child in node["children"])
            return None if left is None or right is None else [*left, *right]
        if node["type"] != "InvocationExpression":
            return None
        target, call = node["children"]
        if _member_name(target) is None or call["type"] != "FunctionInvocation":
            return None
        function = call["children"][0]
        name = _identifier(None, None, function["children"][0])[0]
        params = function["children"][1]["children"] if len(function["children"]) > 1 else []
        if name != "inValueSet" or len(params) != 1:
            return None
        url = self.node(params[0])
        if not isinstance(url, _Constant) or len(url.value) != 1 or type(url.value[0]) is not str:
            return None
        return [(self.node(target), url.value[0])]

    def _library_function(self, name: str, params: list[Node]) -> Step:
        entry = self.registry.get(name)
        if entry is None or "variadic" in entry or name == "trace":
            raise Unsupported(f"function {name}()")
        arity = entry.get("arity", {0: []})
        if len(params) not in arity:
            raise Unsupported(f"{name}() with {len(params)} argument(s)")
        # Some entries list more types than arguments (`upper` takes none and lists one).
        kinds = arity[len(params)][: len(params)]
        evaluators = [
            self._param(kind, self.node(param)) for kind, param in zip(kinds, params, strict=True)
        ]
        direct = self.direct.get(name)
        nullable_input = "nullable_input" in entry
        # fhirpathpy applies `nullable` (any empty argument or input -> empty) only to functions
        # that declare their arguments.
        nullable = "nullable" in entry and "arity" in entry
        if direct is not None and len(evaluators) <= 1:
            # The engine's own functions, called as they are written (most take one argument).
            argument = evaluators[0] if evaluators else None

            def run_direct(focus: Items, scope: Scope) -> Items:
                if (nullable_input or nullable) and not focus:
                    return []
                if argument is None:
                    return _arraify(direct(focus))
                value = argument(scope)
                if nullable and _nullable(value):
                    return []
                return _arraify(direct(focus, value))

            return run_direct
        function = entry["fn"] if direct is None else lambda ctx, focus, *args: direct(focus, *args)

        def run(focus: Items, scope: Scope) -> Items:
            if nullable_input and not focus:
                return []
            values = [evaluate(scope) for evaluate in evaluators]
            if nullable and (not focus or any(_nullable(value) for value in values)):
                return []
            return _arraify(function(scope.ctx, focus, *values))

        return run

    def _param(self, kind: Any, step: Step) -> Param:
        """A parameter as fhirpathpy's make_param gives it: an operator's operands are evaluated
        on the operator's input, a function's arguments on `$this`."""
        if kind == "Expr":
            return lambda scope: lambda data: step(_arraify(data), scope.focused(_arraify(data)))
        if kind in ("Any", "AnyAtRoot"):
            return lambda scope: step(scope.this, scope)
        if kind in ("Identifier", "TypeSpecifier"):
            raise Unsupported(f"a {kind} parameter")
        optional = isinstance(kind, list)
        name = kind[0] if optional else kind
        check = _PARAM_CHECKS.get(name)
        if check is None:
            raise Unsupported(f"a {name} parameter")

        def run(scope: Scope) -> Any:
            value = step(scope.this, scope)
            if optional and not value:
                return []
            if len(value) > 1:
                raise ValueError(f"Unexpected collection; expected singleton of type {name}")
            return check(value[0]) if value else []

        return run

    # Functions implemented here: expression arguments, or trivial.

    def _fn_where(self, params: list[Step]) -> Step:
        (criteria,) = _arguments("where", params, 1)

        def run(focus: Items, scope: Scope) -> Items:
            kept = []
            for item in focus:
                this = [item]
                verdict = criteria(this, scope.focused(this))
                if verdict and verdict[0] is not False:
                    kept.append(item)
            return kept

        return run

    def _fn_select(self, params: list[Step]) -> Step:
        (projection,) = _arguments("select", params, 1)

        def run(focus: Items, scope: Scope) -> Items:
            out: Items = []
            for item in focus:
                this = [item]
                out.extend(projection(this, scope.focused(this)))
            return out

        return run

    def _fn_exists(self, params: list[Step]) -> Step:
        if not params:
            return lambda focus, scope: [bool(focus)]
        where = self._fn_where(params)
        return lambda focus, scope: [bool(where(focus, scope))]

    def _fn_empty(self, params: list[Step]) -> Step:
        _arguments("empty", params, 0)
        return lambda focus, scope: [not focus]

    def _fn_count(self, params: list[Step]) -> Step:
        _arguments("count", params, 0)
        return lambda focus, scope: [len(focus)]

    def _fn_first(self, params: list[Step]) -> Step:
        _arguments("first", params, 0)
        return lambda focus, scope: focus[:1]

    def _fn_not(self, params: list[Step]) -> Step:
        _arguments("not", params, 0)

        def run(focus: Items, scope: Scope) -> Items:
            if len(focus) != 1:
                return []
            value = _get_data(focus[0])
            # fhirpathpy reads any single non-boolean item as true, so its not() is false.
            return [not value] if isinstance(value, bool) else [False]

        return run

    def _fn_iif(self, params: list[Step]) -> Step:
        if len(params) not in (2, 3):
            raise Unsupported(f"iif() with {len(params)} argument(s)")
        condition, then, *otherwise = params

        def run(focus: Items, scope: Scope) -> Items:
            inner = scope.focused(focus)
            verdict = condition(focus, inner)
            if len(verdict) == 1 and verdict[0] == True:  # noqa: E712 (fhirpathpy's is_true)
                return then(focus, inner)
            return otherwise[0](focus, inner) if otherwise else []

        return run

    def _fn_aggregate(self, params: list[Step]) -> Step:
        if len(params) not in (1, 2):
            raise Unsupported(f"aggregate() with {len(params)} argument(s)")
        step, *initial = params

        def run(focus: Items, scope: Scope) -> Items:
            total: Items | None = initial[0](scope.this, scope) if initial else None
            for item in focus:
                this = [item]
                total = step(this, scope.aggregating(this, _arraify(total)))
            return _arraify(total)

        return run


class _Constant:
    """A step whose value does not depend on the data: a literal, or an operator over literals.
    Each evaluation gets its own list."""

    __slots__ = ("value",)

    def __init__(self, value: Items) -> None:
        self.value = value

    def __call__(self, focus: Items, scope: Scope) -> Items:
        return list(self.value)


_LOGIC = frozenset({"and", "or"})


def _logic(name: str, first: Step, second: Step) -> Step:
    """`and` and `or` with FHIRPath's three-valued logic, as fhirpathpy's and_op and or_op; the
    right operand is not evaluated when the left one decides (`false and x`, `true or x`), which
    FHIRPath allows and which saves whole plan variables."""
    decisive = name == "or"  # true decides `or`, false decides `and`

    def run(focus: Items, scope: Scope) -> Items:
        inner = scope.focused(focus) if focus is not scope.this else scope
        a = _boolean(first(focus, inner))
        if a is decisive:
            return [a]
        b = _boolean(second(focus, inner))
        if b is decisive:
            return [b]
        if a == [] or b == []:
            return []
        return [not decisive]

    return run


def _boolean(items: Items) -> bool | Items:
    """An operand of `and`/`or`: true, false or empty; anything else is an error, as in fhirpathpy
    (its Boolean parameter check)."""
    if not items:
        return []
    if len(items) > 1:
        raise ValueError("Unexpected collection; expected singleton of type Boolean")
    item = items[0]
    if item is True or item is False:
        return item
    raise ValueError(f"Expected boolean, got: {item!r}")


def _union(ctx: Any, a: Items, b: Items) -> Items:
    """fhirpathpy's `|` (distinct_fn over both), faster for what unions mostly hold: strings, and
    resources (keyed by their sorted JSON, as fhirpathpy's uniq keys them)."""
    items = a + b
    if all(isinstance(item, str) for item in items):
        return list(dict.fromkeys(items))
    if all(isinstance(item, dict) for item in items):
        try:
            keyed = {orjson.dumps(item, option=orjson.OPT_SORT_KEYS): item for item in items}
        except TypeError:  # a Decimal or another value JSON does not have
            return _distinct(ctx, items)
        # fhirpathpy keeps the first position and the last of equal items; equal is equal here.
        return list(keyed.values())
    return _distinct(ctx, items)


_distinct = adapter.distinct

# Singletons of these types are compared by fhirpathpy as Python compares them (after reading a
# float as a Decimal); anything else (its date and quantity types, collections) goes to it.
_PLAIN = frozenset({str, int, bool, Decimal, float})
_NUMBERS = frozenset({int, Decimal})


def _faster(
    name: str, fast: Callable[[Any, Any], Any], floats_as_decimals: bool = True
) -> Callable[[Any, Items, Items], Any]:
    """fhirpathpy's operator `name`, with `fast(x, y)` for two plain singletons that fhirpathpy
    would compare or add with Python's own operator. Its comparisons and arithmetic read a float
    as a Decimal first; its equality compares them as they are."""
    slow = _REGISTRY[name]["fn"]

    def run(ctx: Any, a: Items, b: Items) -> Any:
        if len(a) == 1 and len(b) == 1:
            x, y = a[0], b[0]
            kind, other = type(x), type(y)
            if kind in _PLAIN and other in _PLAIN:
                if floats_as_decimals and kind is float:
                    x, kind = Decimal(str(x)), Decimal
                if floats_as_decimals and other is float:
                    y, other = Decimal(str(y)), Decimal
                if kind is other or (kind in _NUMBERS and other in _NUMBERS):
                    return fast(x, y)
        return slow(ctx, a, b)

    return run


def _plus(x: Any, y: Any) -> Any:
    if type(x) is bool:  # fhirpathpy adds neither booleans nor a boolean to a number
        raise ValueError(f"Cannot {[x]} + {[y]}")
    return x + y


def _in(ctx: Any, a: Items, b: Items) -> Any:
    """fhirpathpy's `in` (collections.inn)."""
    if not a:
        return []
    if not b:
        return False
    if len(a) > 1:
        raise ValueError(f"Expected singleton on right side of in, got {b}")
    item = a[0]
    return any(candidate == item for candidate in b)


_REGISTRY = adapter.BUILTINS
_FASTER: Mapping[str, Callable[..., Any]] = {
    "|": _union,
    "inOp": _in,
    "=": _faster("=", operator.eq, floats_as_decimals=False),
    "!=": _faster("!=", operator.ne, floats_as_decimals=False),
    "<": _faster("<", operator.lt),
    ">": _faster(">", operator.gt),
    "<=": _faster("<=", operator.le),
    ">=": _faster(">=", operator.ge),
    "+": _faster("+", _plus),
}


def _member_name(node: Node) -> str | None:
    """The element name of a term that is one plain member (`status`), else None."""
    if node["type"] != "TermExpression":
        return None
    (term,) = node["children"]
    if term["type"] != "InvocationTerm":
        return None
    (member,) = term["children"]
    if member["type"] != "MemberInvocation":
        return None
    key: str = _identifier(None, None, member["children"][0])[0].replace("`", "")
    return None if key[0] == key[0].upper() else key


def _arguments(name: str, params: list[Step], count: int) -> list[Step]:
    if len(params) != count:
        raise Unsupported(f"{name}() with {len(params)} argument(s)")
    return params


def _arraify(value: Any) -> Items:
    """fhirpathpy's arraify: a list as it is, None or [] as empty, anything else as one item."""
    if isinstance(value, list):
        return value
    return [] if value is None else [value]


def _nullable(value: Any) -> bool:
    return value is None or (isinstance(value, list) and not value)


def _extension_stand_in(item: Any) -> bool:
    """fhirpathpy's stand-in for a primitive's extension (`_effectiveDateTime`) is not a value."""
    if type(item) is dict:  # the request's own objects: no list of every resource's keys
        return len(item) == 1 and "extension" in item
    return isinstance(item, Mapping) and list(item) == ["extension"]
