"""What the contract fuzzing needs beside the served contract itself, shared by
tests/test_schemathesis.py and the reliability benchmark (bench/fuzz.py), so both fuzz the same
API the same way.

Two rules no JSON Schema can state: whether the `fhirServer` a call names is usable is the
deployment's choice (412 is expected for valid and invalid requests alike), and order-select's
`selections` must name entries of its `draftOrders` (generated requests use a fixed pair, which
invalid ones break).
"""

from __future__ import annotations

import copy
from typing import Any

# A prefetch key left out and a fhirServer this deployment will not contact is answered 412
# (CDS Hooks: required data that cannot be had). The host list is configuration, not contract.
DEPLOYMENT_DEPENDENT = ["412"]
CHECKS_CONFIG: dict[str, Any] = {
    "enabled": True,
    "positive_data_acceptance": {
        "expected-statuses": ["2xx", "401", "403", "404", "409", "429", *DEPLOYMENT_DEPENDENT]
    },
    "negative_data_rejection": {
        "expected-statuses": [
            *("400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428"),
            *("429", *DEPLOYMENT_DEPENDENT),
        ]
    },
}
DRAFT_ORDERS = {
    "resourceType": "Bundle",
    "type": "collection",
    "entry": [{"resource": {"resourceType": "ServiceRequest", "id": "draft-1"}}],
}
SELECTIONS = ["ServiceRequest/draft-1"]


def with_order_selections(document: dict[str, Any]) -> dict[str, Any]:
    """The contract with order-select's selections pinned to its draft orders."""
    fuzzed = copy.deepcopy(document)
    for path, item in fuzzed["paths"].items():
        operation = item.get("post", {})
        if not operation.get("operationId", "").startswith("call-") or "order-select" not in path:
            continue
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        schema["allOf"].append(
            {
                "properties": {
                    "context": {
                        "properties": {
                            "draftOrders": {"const": DRAFT_ORDERS},
                            "selections": {"const": SELECTIONS},
                        }
                    }
                }
            }
        )
    return fuzzed
