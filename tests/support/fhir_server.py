"""A real FHIR R4 server for tests: `sekmet-fhir` (from the `test` extras) as a subprocess on
127.0.0.1, with its SQLite store in a temp directory and a static bearer token.

    with sekmet_server(tmp_path) as fhir:
        fhir.transaction(bundle)
        fhir.search("Condition?patient=syn-1")

Start it once per module or session: it needs about 1 s to start, 2 s to stop and 90 MB.
It is never skipped: if it cannot start, the error says why, with the server's output.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

LOOPBACK = "127.0.0.1"
FHIR_JSON = "application/fhir+json"


class FhirServerError(RuntimeError):
    """The server did not start, or answered a helper's request with an error."""


@dataclass(frozen=True)
class FhirServer:
    base_url: str  # e.g. http://127.0.0.1:41234/fhir
    token: str
    log_path: Path
    http: httpx.Client
    process: subprocess.Popen[bytes]

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def url(self, path: str) -> str:
        """`path` relative to the base (`Patient/1`, `Condition?code=...`), or an absolute URL
        on this server such as a paging `next` link. Other hosts are refused: the token would
        go with the request."""
        if path.startswith(("http://", "https://")):
            if not path.startswith(f"{self.base_url}/") and path != self.base_url:
                raise ValueError(f"{path} is not on this FHIR server ({self.base_url})")
            return path
        return f"{self.base_url}/{path.lstrip('/')}"

    def get(self, path: str, *, headers: Mapping[str, str] | None = None) -> httpx.Response:
        """A raw GET; with the bearer token unless other `headers` are given ({} for none)."""
        return self.http.get(
            self.url(path), headers=self.auth_headers if headers is None else headers
        )

    def search(self, path: str) -> dict[str, Any]:
        """GET `path` (a read or a search) and return the JSON; FhirServerError unless 200."""
        return _json_or_raise(self.get(path), f"GET {path}")

    def transaction(self, bundle: Mapping[str, Any]) -> dict[str, Any]:
        """POST a transaction (or batch) Bundle to the base; the response Bundle."""
        response = self.http.post(
            self.base_url,
            json=dict(bundle),
            headers={**self.auth_headers, "Content-Type": FHIR_JSON},
        )
        return _json_or_raise(response, "transaction")


def _json_or_raise(response: httpx.Response, what: str) -> dict[str, Any]:
    if response.status_code != 200:
        raise FhirServerError(f"{what}: HTTP {response.status_code}: {response.text[:2000]}")
    body: dict[str, Any] = response.json()
    return body


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _settings(data_dir: Path, port: int, token: str, *, open_access: bool) -> dict[str, Any]:
    # Open access is for clients that send no token at all (the CDS Hooks Sandbox reads the
    # patient's data from the browser without one); the token is then accepted and ignored.
    auth: dict[str, Any] = {"types": ["none"]} if open_access else {"types": ["bearer"]}
    auth["tokens"] = [token]
    return {
        # Paging links and fullUrls are built from base_url, so it must be the real address.
        "base_url": f"http://{LOOPBACK}:{port}/fhir",
        "host": LOOPBACK,
        "port": port,
        "data_dir": str(data_dir),
        "db_path": str(data_dir / "sekmet.db"),
        "own_private_key_path": str(data_dir / "keys" / "sekmet_private.pem"),
        "server_auth": auth,
        # The simulator would answer ServiceRequests etc. with resources of its own.
        "simulator": {"enabled": False},
        # Keeps every request body out of SQLite; the access log still lands in log_path.
        "log_inbound": False,
        "validation": {"inbound": "strict"},
    }


@contextmanager
def sekmet_server(
    data_dir: Path,
    *,
    token: str | None = None,
    open_access: bool = False,
    startup_timeout: float = 30.0,
) -> Iterator[FhirServer]:
    """Run `sekmet serve` on a free loopback port with its data in `data_dir`; stop it (and
    kill it if it does not stop) when the block ends, also on failure. With `open_access`,
    requests without a token are answered too."""
    if importlib.util.find_spec("sekmet") is None:
        raise FhirServerError("sekmet-fhir is not installed: pip install -e '.[test]'")
    token = token or secrets.token_urlsafe(24)
    data_dir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    config = data_dir / "sekmet-settings.yaml"
    config.write_text(yaml.safe_dump(_settings(data_dir, port, token, open_access=open_access)))
    log_path = data_dir / "sekmet.log"
    # SEKMET_* variables would override the settings file (base URL, port, database).
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEKMET_")}
    command = [sys.executable, "-m", "sekmet.cli", "serve", "--config", str(config)]
    command += ["--host", LOOPBACK, "--port", str(port)]
    with log_path.open("w") as log:
        # cwd: sekmet writes relative paths (keys/, reports/) under the working directory.
        process = subprocess.Popen(
            command, cwd=data_dir, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    http = httpx.Client(timeout=30.0)
    server = FhirServer(f"http://{LOOPBACK}:{port}/fhir", token, log_path, http, process)
    try:
        _wait_ready(process, server, startup_timeout)
        yield server
    finally:
        http.close()
        _stop(process)


def _wait_ready(process: subprocess.Popen[bytes], server: FhirServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise FhirServerError(
                f"sekmet-fhir exited with {process.returncode} before it was ready:\n"
                f"{server.output()}"
            )
        try:
            # /metadata needs no token; the authenticated search below checks the token.
            if server.http.get(f"{server.base_url}/metadata", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise FhirServerError(
                f"sekmet-fhir was not ready within {timeout} s:\n{server.output()}"
            )
        time.sleep(0.1)
    probe = server.get("Patient?_count=0")
    if probe.status_code != 200:
        raise FhirServerError(
            f"sekmet-fhir refused its own token: HTTP {probe.status_code} {probe.text[:500]}"
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
