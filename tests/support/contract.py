"""openapi.yaml as test assertions: a response is documented, and its body and headers match
the documented schemas (references resolved in the contract, as OpenAPI tools do)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import jsonschema
import yaml
from referencing import Registry
from referencing.jsonschema import DRAFT202012

CONTRACT_PATH = Path(__file__).resolve().parents[2] / "openapi.yaml"
CONTRACT_URI = "urn:rpl-cds:openapi"
BASE_URL = "http://cds.test"
HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
# Served by FastAPI itself for every app; not part of the CDS contract.
FRAMEWORK_PATHS = frozenset({"/openapi.json"})

CONTRACT: dict[str, Any] = yaml.safe_load(CONTRACT_PATH.read_text(encoding="utf-8"))
REGISTRY: Registry[Any] = Registry().with_resource(
    CONTRACT_URI, DRAFT202012.create_resource(CONTRACT)
)


# --------------------------------------------------------------------------- contract helpers


def _pointer(*parts: str) -> str:
    return "/" + "/".join(part.replace("~", "~0").replace("/", "~1") for part in parts)


def _deref(node: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Follow an OpenAPI-level local `$ref` (responses, examples, parameters); return the node
    and its JSON pointer in the contract when it was a reference."""
    ref = node.get("$ref")
    if not isinstance(ref, str):
        return node, None
    assert ref.startswith("#/"), f"only local references are used: {ref}"
    target: Any = CONTRACT
    for part in ref[2:].split("/"):
        target = target[part.replace("~1", "/").replace("~0", "~")]
    return target, ref[1:]


def validator_at(pointer: str) -> jsonschema.Draft202012Validator:
    """A validator for the schema at `pointer` in the contract; its `$ref`s resolve in the
    contract, as they do for OpenAPI tools."""
    return jsonschema.Draft202012Validator(
        {"$ref": f"{CONTRACT_URI}#{pointer}"},
        registry=REGISTRY,
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
    )


def component(name: str) -> jsonschema.Draft202012Validator:
    return validator_at(_pointer("components", "schemas", name))


def assert_valid(validator: jsonschema.Draft202012Validator, instance: Any, what: str) -> None:
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    assert not errors, f"{what} does not match the contract:\n" + "\n".join(
        f"  at {'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors
    )


def assert_documented(response: httpx.Response, path: str, method: str) -> Any:
    """The status is documented for the operation, the media type matches, and the body
    validates against the documented schema. Returns the parsed JSON body."""
    operation = CONTRACT["paths"][path][method.lower()]
    status = str(response.status_code)
    assert status in operation["responses"], (
        f"{method} {path} answered {status}, which the contract does not document: {response.text}"
    )
    documented, pointer = _deref(operation["responses"][status])
    pointer = pointer or _pointer("paths", path, method.lower(), "responses", status)
    media_type = response.headers["content-type"].split(";")[0].strip()
    assert media_type in documented["content"], (
        f"{method} {path} {status} has content type {media_type}"
    )
    for name, node in documented.get("headers", {}).items():
        header, header_pointer = _deref(node)
        if header.get("required", False):  # OpenAPI headers are optional unless required
            assert name in response.headers, f"{method} {path} {status} lacks the {name} header"
        if name in response.headers:
            schema = validator_at(f"{header_pointer or f'{pointer}/headers/{name}'}/schema")
            assert_valid(schema, response.headers[name], name)
    body = response.json()
    schema_pointer = f"{pointer}/content/{_pointer(media_type)[1:]}/schema"
    assert_valid(validator_at(schema_pointer), body, f"{method} {path} {status} body")
    return body
