"""Loading knowledge: FHIR R4 JSON artifacts from directories, validated and compiled once.

Every problem is collected (file, element path, reason) so an author sees all of them at once;
any problem stops start-up. Reading and indexing the resources is `registry.py`; compiling each
PlanDefinition, `compiler.py`; what it compiles to, `plan.py`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.engine.check_digits import code_problems
from service.engine.compiler import PlanCompiler
from service.engine.fhirpath import CompiledExpression
from service.engine.fhirpath.functions import engine_functions
from service.engine.fhirpath.static_check import check_expression
from service.engine.knowledge_cache import KnowledgeCache
from service.engine.orderable import orderable_problems
from service.engine.plan import Plan
from service.engine.problems import KnowledgeError, Problem
from service.engine.registry import Registry, read_documents, register
from service.engine.terminology import Terminology
from service.engine.units import UnitTable


@dataclass
class Knowledge(Registry):
    """The loaded resources (the registry) and what was compiled from them."""

    plans: list[Plan] = field(default_factory=list)
    terminology: Terminology = field(default_factory=Terminology.empty)
    units: UnitTable = field(default_factory=lambda: UnitTable.from_documents([]))
    functions: Mapping[str, Any] = field(default_factory=dict)


def load_knowledge(
    directories: Iterable[Path],
    parameters: Mapping[str, Any] | None = None,
    cache: KnowledgeCache | None = None,
) -> Knowledge:
    """Load, validate and compile; `parameters` are the deployment's values for the parameters
    the knowledge declares (an unknown name or a wrong type is a problem too). `cache` holds
    what earlier starts computed (parse trees, resources validated) and takes what this one
    computes."""
    problems: list[Problem] = []
    knowledge = Knowledge()
    directories = list(directories)
    documents = list(read_documents(directories, problems))
    for file, resource in documents:
        register(knowledge, file, resource, problems, cache)
        # A code whose check digit fails is a typo: it would silently match nothing.
        problems.extend(Problem(file, path, reason) for path, reason in code_problems(resource))
    # A suggested order coded only as text or in a billing system cannot be placed by the EHR.
    problems.extend(orderable_problems(documents))
    # Terminology and units first: the engine functions compiled into expressions use them.
    knowledge.terminology = Terminology.from_resources(knowledge.by_canonical)
    for canonical, reason in knowledge.terminology.problems():
        problems.append(Problem(knowledge.files.get(canonical, Path("-")), canonical, reason))
    knowledge.units = UnitTable.load([d for d in directories if d.is_dir()])
    problems.extend(knowledge.units.problems)
    knowledge.functions = engine_functions(knowledge.terminology, knowledge.units)
    compiled: dict[str, CompiledExpression] = {}  # shared by the plans: one text, one compile
    for file, resource in documents:
        if resource.get("resourceType") == "PlanDefinition":
            plan = PlanCompiler(
                knowledge,
                knowledge.terminology,
                file,
                problems,
                functions=knowledge.functions,
                cache=cache,
                static_check=lambda tree: check_expression(
                    tree, knowledge.terminology, knowledge.units
                ),
                settings=parameters or {},
                compiled=compiled,
            ).compile(resource)
            if plan is not None:
                knowledge.plans.append(plan)
    declared = _declared_parameters(knowledge)
    for name in sorted(set(parameters or {}) - declared):
        problems.append(
            Problem(Path("RPL_CDS_PARAMETERS"), name, "no loaded Library declares this parameter")
        )
    if problems:
        raise KnowledgeError(problems)
    return knowledge


def _declared_parameters(knowledge: Knowledge) -> set[str]:
    """Every `in` parameter of a loaded Library, valid or not (an invalid one is reported
    already; it must not also read as undeclared)."""
    return {
        str(definition.get("name"))
        for resource in knowledge.by_canonical.values()
        if resource.get("resourceType") == "Library"
        for definition in resource.get("parameter", [])
        if definition.get("use") == "in"
    }
