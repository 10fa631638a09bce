"""Load synthetic resources into a FHIR R4 server as one transaction Bundle.

For integration engineers who need a test EHR to hold the patients of a scenario:

    bundle = to_transaction([patient, *conditions])
    await load_bundle("http://127.0.0.1:8090/fhir", bundle, token, http)

Entries are `PUT {type}/{id}`, so loading the same resources twice updates them instead of
creating copies, and the references between them (`Patient/{id}`) stay valid on the server.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from typing import Any

import httpx

FHIR_JSON = "application/fhir+json"
# FHIR R4 `id` datatype. Checked because the id becomes part of a request URL.
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_MAX_DETAIL = 1000


class FhirLoadError(RuntimeError):
    """The FHIR server refused the transaction or could not be reached. `status` is the HTTP
    status, or None when there was no answer. The message never contains the bearer token."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def to_transaction(resources: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """A transaction Bundle that PUTs each resource at `{resourceType}/{id}`.

    The resources are copied, not shared with the Bundle. Raises ValueError for a resource
    without a resourceType or a valid FHIR id, and for the same resource listed twice (a FHIR
    server must reject a transaction that touches one resource twice)."""
    entries: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, resource in enumerate(resources):
        resource_type = resource.get("resourceType")
        resource_id = resource.get("id")
        if not isinstance(resource_type, str) or not resource_type.isalpha():
            raise ValueError(f"resource {index}: missing or invalid resourceType")
        if not isinstance(resource_id, str) or not _FHIR_ID.fullmatch(resource_id):
            raise ValueError(f"resource {index} ({resource_type}): missing or invalid id")
        url = f"{resource_type}/{resource_id}"
        if url in seen:
            raise ValueError(f"resource {index}: {url} is listed more than once")
        seen.add(url)
        # No fullUrl: it would have to be absolute, and the server's base is not known here.
        entries.append(
            {"resource": copy.deepcopy(dict(resource)), "request": {"method": "PUT", "url": url}}
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


async def load_bundle(
    base_url: str, bundle: Mapping[str, Any], token: str | None, http: httpx.AsyncClient
) -> dict[str, Any]:
    """POST a transaction Bundle to the FHIR server at `base_url` and return its
    transaction-response Bundle. Raises FhirLoadError with the HTTP status and the server's
    OperationOutcome text when the server refuses it (a transaction is all or nothing, so
    nothing was stored) or cannot be reached; ValueError if `bundle` is not a transaction."""
    if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "transaction":
        raise ValueError("load_bundle needs a Bundle of type 'transaction'")
    url = base_url.rstrip("/")
    headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        response = await http.post(url, json=dict(bundle), headers=headers)
    except httpx.HTTPError as error:
        # httpx messages name the URL, never the request headers.
        detail = _redact(str(error) or type(error).__name__, token)
        raise FhirLoadError(f"FHIR transaction to {url} failed: {detail}") from error
    if not response.is_success:
        detail = _redact(_describe(response), token)
        raise FhirLoadError(
            f"FHIR transaction to {url} failed: HTTP {response.status_code}: {detail}",
            response.status_code,
        )
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or body.get("type") != "transaction-response":
        raise FhirLoadError(
            f"FHIR transaction to {url} answered HTTP {response.status_code} "
            "without a transaction-response Bundle",
            response.status_code,
        )
    return body


def _describe(response: httpx.Response) -> str:
    """The OperationOutcome's issues as text, else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        issues = [_issue_text(i) for i in body.get("issue") or [] if isinstance(i, dict)]
        if issues:
            return "; ".join(issues)[:_MAX_DETAIL]
    return response.text[:_MAX_DETAIL] or response.reason_phrase


def _issue_text(issue: Mapping[str, Any]) -> str:
    details = issue.get("details")
    text = issue.get("diagnostics") or (details.get("text") if isinstance(details, dict) else None)
    where = ", ".join(str(e) for e in issue.get("expression") or [])
    parts = [f"{issue.get('severity', 'error')} {issue.get('code', 'unknown')}", str(text or "")]
    return " ".join(p for p in parts if p) + (f" (at {where})" if where else "")


def _redact(text: str, token: str | None) -> str:
    # A server may echo the Authorization header back in its error; never pass it on.
    return text.replace(token, "[redacted]") if token else text
