"""The generic PlanDefinition engine: knowledge loaded and compiled once, `$apply` per call.

This is the engine's public face: the rest of `service/` imports from here, not from the modules
inside, so the engine can be re-arranged without touching its callers. The engine imports nothing
from the HTTP layer (`cdshooks/`, `auth/`, `feedback/`, `ops/`; a test checks it).
"""

from service.engine.apply import Result, Subject, TraceEntry, apply_plan
from service.engine.compiler import (
    CodeFilterError,
    allowed_values_url,
    default_value,
    filter_codes,
)
from service.engine.knowledge import Knowledge, load_knowledge
from service.engine.knowledge_cache import KnowledgeCache
from service.engine.plan import (
    APPLICABILITY_BEHAVIOR,
    PREFERRED_CITATION,
    VARIABLE_EXTENSION,
    Action,
    Plan,
    first_match_only,
)
from service.engine.problems import KnowledgeError, ParameterValueProblem, Problem
from service.engine.registry import UNIT_TABLE_SUFFIX, read_documents
from service.engine.terminology import (
    TEXT_PATTERN_EXTENSION,
    TRANSLATING_EQUIVALENCES,
    TRANSLATING_RELATIONSHIPS,
    Terminology,
)

__all__ = [
    "APPLICABILITY_BEHAVIOR",
    "PREFERRED_CITATION",
    "TEXT_PATTERN_EXTENSION",
    "TRANSLATING_EQUIVALENCES",
    "TRANSLATING_RELATIONSHIPS",
    "UNIT_TABLE_SUFFIX",
    "VARIABLE_EXTENSION",
    "Action",
    "CodeFilterError",
    "Knowledge",
    "KnowledgeCache",
    "KnowledgeError",
    "ParameterValueProblem",
    "Plan",
    "Problem",
    "Result",
    "Subject",
    "Terminology",
    "TraceEntry",
    "allowed_values_url",
    "apply_plan",
    "default_value",
    "filter_codes",
    "first_match_only",
    "load_knowledge",
    "read_documents",
]
