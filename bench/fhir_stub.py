"""A small FHIR server on 127.0.0.1 for the reliability benchmark's no-prefetch calls: it answers
`Patient/<id>` and every search `<Type>?...` from a fixed set of resources (all of that type,
whatever the query's parameters: the benchmark counts failures, not clinical answers), and only
with the expected bearer token (401 otherwise, so a call that lost its token shows).

It runs as a process of its own, so that it does not share the benchmark's event loop or GIL:

    python -m bench.fhir_stub --port 8090 --data resources.json

`resources.json`: {"token": "...", "resources": [...]}. GET /readyz (and /fhir/metadata) answer
200 for the readiness check of bench/procs.py. Nothing is logged: the request lines carry the patient id.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

LOOPBACK = "127.0.0.1"
BASE_PATH = "/fhir"
FHIR_JSON = "application/fhir+json"


def _searchset(resources: list[dict[str, Any]]) -> bytes:
    entries = [{"resource": r, "search": {"mode": "match"}} for r in resources]
    bundle = {"resourceType": "Bundle", "type": "searchset", "total": len(entries)}
    return json.dumps({**bundle, "entry": entries}).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the service's connection pool expects
    server: _Server
    timeout = 30  # an idle connection does not hold a thread for ever

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path in ("/readyz", f"{BASE_PATH}/metadata"):
            self._send(200, b'{"resourceType": "CapabilityStatement"}')
            return
        if self.headers.get("Authorization") != f"Bearer {self.server.token}":
            self._send(401, b'{"resourceType": "OperationOutcome"}')
            return
        relative = path.removeprefix(f"{BASE_PATH}/")
        kind, _, read_id = relative.partition("/")
        if read_id:
            body = self.server.reads.get((kind, read_id))
            self._send(404, b"{}") if body is None else self._send(200, body)
            return
        self._send(200, self.server.searches.get(kind, self.server.empty))

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", FHIR_JSON)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the request lines hold the (synthetic) patient id."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, token: str, resources: list[dict[str, Any]]) -> None:
        self.token = token
        by_type: dict[str, list[dict[str, Any]]] = {}
        for resource in resources:
            by_type.setdefault(resource["resourceType"], []).append(resource)
        # Serialised once: the stub must stay cheap next to the service it feeds.
        self.searches = {kind: _searchset(items) for kind, items in by_type.items()}
        self.reads = {(r["resourceType"], r["id"]): json.dumps(r).encode() for r in resources}
        self.empty = _searchset([])
        super().__init__((LOOPBACK, port), _Handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.fhir_stub", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data", type=Path, required=True)
    args = parser.parse_args(argv)
    data = json.loads(args.data.read_text())
    with _Server(args.port, data["token"], data["resources"]) as server:
        server.serve_forever(poll_interval=0.1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
