"""RequestGroup -> CDS Hooks cards, following the HL7 "Using FHIR Clinical Reasoning with CDS Hooks"
mapping: top-level action -> card, child actions -> suggestions, their resources -> `create`
actions, priority -> indicator, documentation -> source and links.

Every optional field is omitted rather than null or empty (CDS Hooks 2.0), and card and suggestion
uuids are name-based: the same hookInstance and action always give the same uuid, so an EHR that
retries a call gets cards it can still send feedback for.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Name-based uuids live in their own namespace so they cannot collide with other uuid5 users.
CARD_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:rpl-cds:cards")
OVERRIDE_REASON_EXTENSION = "https://fhir.rpl-cds.org/StructureDefinition/cds-override-reason"
RECOMMENDED_EXTENSION = "https://fhir.rpl-cds.org/StructureDefinition/cds-is-recommended"
SUMMARY_LIMIT = 140

_INDICATOR = {"routine": "info", "urgent": "warning", "asap": "warning", "stat": "critical"}
_SINGLE_CHOICE = {"at-most-one", "exactly-one"}


@dataclass(frozen=True)
class Card:
    """A card as sent (`body`) and the topic it is about, from the action it was encoded from,
    so that what follows (metrics, issued-card records) need not read it back out of the JSON."""

    body: dict[str, Any]
    topic_system: str
    topic_code: str


UNTAGGED = "untagged"  # the topic code of a card whose action has no coded topic


def card_uuid(hook_instance: str, service_id: str, action_key: str) -> str:
    return str(uuid.uuid5(CARD_NAMESPACE, f"{hook_instance}/{service_id}/{action_key}"))


def summary_text(title: str) -> str:
    """One line under 140 characters, as the specification requires of a summary."""
    text = " ".join(title.split())
    return text if len(text) < SUMMARY_LIMIT else text[: SUMMARY_LIMIT - 2].rstrip() + "…"


def encode_cards(
    request_group: Mapping[str, Any],
    *,
    hook_instance: str,
    service_id: str,
    default_source: str,
) -> list[Card]:
    contained = {r["id"]: r for r in request_group.get("contained", []) if "id" in r}
    return [
        Card(
            _card(action, contained, hook_instance, service_id, default_source),
            *_topic(action),
        )
        for action in request_group.get("action", [])
    ]


def _topic(action: Mapping[str, Any]) -> tuple[str, str]:
    topic = topic_coding(action) or {}
    return topic.get("system", ""), topic.get("code", UNTAGGED)


# What an action becomes on its card, one rule each: the card encoder below uses them, and so
# does the clinical-logic document (service/authoring), so that it cannot describe another card.


def topic_coding(action: Mapping[str, Any]) -> dict[str, Any] | None:
    """The card's topic: the action's first coding with a system and a code."""
    return _first_coding(action.get("code", []))


def indicator(action: Mapping[str, Any]) -> str:
    """The card's indicator, from the action's priority."""
    return _INDICATOR.get(action.get("priority", "routine"), "info")


def selection_behavior(action: Mapping[str, Any]) -> str:
    """How many of the card's suggestions the clinician may accept."""
    return "at-most-one" if action.get("selectionBehavior") in _SINGLE_CHOICE else "any"


def becomes_suggestion(child: Mapping[str, Any]) -> bool:
    """Whether a child action is shown as a suggestion (CDS Hooks requires its label)."""
    return bool(child.get("title"))


def is_recommended(action: Mapping[str, Any]) -> bool | None:
    """A suggestion's `isRecommended`, when the action says."""
    return next(
        (
            e.get("valueBoolean")
            for e in action.get("extension", [])
            if e.get("url") == RECOMMENDED_EXTENSION
        ),
        None,
    )


def _card(
    action: Mapping[str, Any],
    contained: Mapping[str, Mapping[str, Any]],
    hook_instance: str,
    service_id: str,
    default_source: str,
) -> dict[str, Any]:
    uid = card_uuid(hook_instance, service_id, action["id"])
    card: dict[str, Any] = {
        "uuid": uid,
        "summary": summary_text(action.get("title") or "Recommendation"),
        "indicator": indicator(action),
        "source": _source(action, default_source),
    }
    if action.get("description"):
        card["detail"] = action["description"]
    suggestions = [
        _suggestion(child, contained, uid)
        for child in action.get("action", [])
        if becomes_suggestion(child)
    ]
    if suggestions:
        card["suggestions"] = suggestions
        card["selectionBehavior"] = selection_behavior(action)
    reasons = override_reasons(action)
    if reasons:
        card["overrideReasons"] = reasons
    links = _links(action)
    if links:
        card["links"] = links
    return card


def _source(action: Mapping[str, Any], default_label: str) -> dict[str, Any]:
    documents = [d for d in action.get("documentation", []) if d.get("type") == "citation"]
    first = documents[0] if documents else {}
    source: dict[str, Any] = {"label": first.get("display") or first.get("label") or default_label}
    if first.get("url"):
        source["url"] = first["url"]
    icon = (first.get("document") or {}).get("url")
    if icon:
        source["icon"] = icon
    topic = topic_coding(action)
    if topic:
        source["topic"] = topic
    return source


def _links(action: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "label": d.get("display") or d.get("label") or d["url"],
            "url": d["url"],
            "type": "absolute",
        }
        for d in action.get("documentation", [])
        if d.get("url") and d.get("type") in {"documentation", "justification", "citation"}
    ]


def _first_coding(concepts: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    for concept in concepts:
        for coding in concept.get("coding", []):
            if coding.get("system") and coding.get("code"):
                return {k: coding[k] for k in ("system", "code", "display") if coding.get(k)}
    return None


def override_reasons(action: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The card's override reasons: each coding with a display (the specification requires it)."""
    return [
        {k: coding[k] for k in ("system", "code", "display") if coding.get(k)}
        for extension in action.get("extension", [])
        if extension.get("url") == OVERRIDE_REASON_EXTENSION
        for coding in [extension.get("valueCoding", {})]
        if coding.get("display")  # the specification requires a display on each reason
    ]


def _suggestion(
    action: Mapping[str, Any], contained: Mapping[str, Mapping[str, Any]], card_id: str
) -> dict[str, Any]:
    suggestion: dict[str, Any] = {
        "label": action["title"],
        "uuid": str(uuid.uuid5(CARD_NAMESPACE, f"{card_id}/{action['id']}")),
    }
    recommended = is_recommended(action)
    if recommended is not None:
        suggestion["isRecommended"] = recommended
    # The suggestion's own resource, then its child actions (HL7 mapping: action.action.action).
    steps = [
        _step(action, contained),
        *(_step(child, contained) for child in action.get("action", [])),
    ]
    actions = sorted((step for step in steps if step), key=lambda step: _STEP_ORDER[step["type"]])
    if actions:
        suggestion["actions"] = actions
    return suggestion


# CDS Hooks asks clients to apply a suggestion's actions as a transaction: deletes first.
_STEP_ORDER = {"delete": 0, "create": 1}


def _step(
    action: Mapping[str, Any], contained: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any] | None:
    """One CDS Hooks action: `remove` of an existing resource becomes `delete` by resourceId; a
    resource created by $apply becomes `create`."""
    reference = (action.get("resource") or {}).get("reference", "")
    if not reference:
        return None
    description = action.get("description") or action.get("title") or "Apply the suggestion"
    kind = action_type(action)
    if not reference.startswith("#"):
        if kind != "remove":
            return None
        return {"type": "delete", "description": description, "resourceId": reference}
    resource = contained.get(reference.removeprefix("#"))
    if resource is None:
        return None
    body = {k: v for k, v in resource.items() if k != "id"}
    return {
        "type": "update" if kind == "update" else "create",
        "description": description,
        "resource": body,
    }


def action_type(action: Mapping[str, Any]) -> str:
    """The action's type code (`create`, `update`, `remove`); `create` when it has none."""
    coding = _first_coding([action.get("type") or {}]) or {}
    return str(coding.get("code", "create"))
