"""A misbehaving FHIR server for the fault tests: real HTTP on 127.0.0.1, in a thread of its own,
answering each path the way a test tells it to (slowly, with errors, with bad bodies, with
paging links that loop or leave the server, with a body too large to buffer).

    with FaultServer() as fhir:
        fhir.route("Patient/", Json(scenario.patient()))
        fhir.route("Condition?", Sequence([Status(503), Json(bundle)]))
        ...  # call the service with fhirServer = fhir.base_url
        assert fhir.requests_to("Condition?")[0].authorization == "Bearer ..."

Routes are prefixes of the request's path and query relative to the base (`Patient/`,
`Condition?patient=`); the longest matching prefix wins, and a request no route matches gets a
404 OperationOutcome. Every request is recorded (path, query, Authorization header, bytes
sent), including those to unmatched paths. Each request and each delay runs on its own thread
and holds no lock while it waits, so a slow answer never holds up another; leaving the `with`
block wakes every waiting answer, stops the server and joins its threads.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

LOOPBACK = "127.0.0.1"
FHIR_JSON = "application/fhir+json"
_CHUNK = 64 * 1024


@dataclass
class Recorded:
    """One request as the server saw it."""

    method: str
    path: str  # without the query, e.g. /fhir/Patient/syn-1
    query: str  # the raw query string, "" when none
    authorization: str | None
    host: str | None
    cookie: str | None = None  # the `Cookie` header, if the client sent one
    bytes_sent: int = 0  # body bytes written before the answer ended or the client left

    @property
    def target(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path


# Behaviours: what the server does for a route. -----------------------------------------------


@dataclass(frozen=True)
class Json:
    """Serve a JSON document (with a Content-Length)."""

    document: Any
    status: int = 200
    content_type: str = FHIR_JSON
    set_cookie: str | None = None  # a `Set-Cookie` header value to send with it


@dataclass(frozen=True)
class Status:
    """An HTTP status with an OperationOutcome (or the given document) as the body."""

    code: int
    document: Any = None


@dataclass(frozen=True)
class Raw:
    """Bytes as they are: malformed JSON, HTML error pages and the like."""

    body: bytes
    status: int = 200
    content_type: str = FHIR_JSON


@dataclass(frozen=True)
class Delay:
    """Wait `seconds`, then do `then` (woken early when the server stops)."""

    seconds: float
    then: Behaviour


@dataclass(frozen=True)
class Wait:
    """Wait until `event` is set, then do `then` (woken early when the server stops): a server
    that answers exactly when the test says so."""

    event: threading.Event
    then: Behaviour


@dataclass(frozen=True)
class Huge:
    """A body of `size` bytes, written in chunks as it goes (never built in memory): the start of
    a searchset Bundle followed by padding. With `declare_length` the size is sent as
    Content-Length; without, the body is chunked, so only counting while reading can stop it."""

    size: int
    declare_length: bool = False


@dataclass(frozen=True)
class Trickle:
    """Send the headers at once, then the document a few bytes every `interval` seconds: a body
    that keeps arriving, each piece well within any per-read timeout, for far longer than the
    budget."""

    document: Any
    interval: float = 0.1
    piece: int = 4


@dataclass(frozen=True)
class Drop:
    """Close the connection without answering (a crashed worker, a proxy cutting it)."""


@dataclass(frozen=True)
class Echo:
    """A behaviour computed from the request (and the server), e.g. a page linking to itself."""

    make: Callable[[Recorded, FaultServer], Behaviour]


@dataclass
class Sequence:
    """One behaviour per request, in order; the last one repeats."""

    steps: list[Behaviour]
    _served: int = field(default=0, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def next_step(self) -> Behaviour:
        with self._lock:
            step = self.steps[min(self._served, len(self.steps) - 1)]
            self._served += 1
        return step


Behaviour = Json | Status | Raw | Delay | Wait | Huge | Trickle | Drop | Echo | Sequence


def outcome(text: str, code: str = "exception") -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text}],
    }


def searchset(resources: list[dict[str, Any]], next_url: str | None = None) -> dict[str, Any]:
    """A searchset Bundle page, with a `next` link when `next_url` is given."""
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
    }
    if next_url is not None:
        bundle["link"] = [{"relation": "next", "url": next_url}]
    return bundle


# The server. ------------------------------------------------------------------------------------


class _Stopped(Exception):
    """The server is stopping; the answer in progress is abandoned."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HttpServer
    timeout = 10  # a client that connects and never sends a request does not keep a thread

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: paths carry (synthetic) patient ids, and the tests read the record instead."""

    def _answer(self) -> None:
        parts = urlsplit(self.path)
        record = Recorded(
            method=self.command,
            path=parts.path,
            query=parts.query,
            authorization=self.headers.get("Authorization"),
            host=self.headers.get("Host"),
            cookie=self.headers.get("Cookie"),
        )
        fault = self.server.fault
        fault.record(record)
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        behaviour = fault.behaviour_for(record)
        with suppress(_Stopped, BrokenPipeError, ConnectionResetError, TimeoutError):
            self._perform(behaviour, record)

    def _perform(self, behaviour: Behaviour, record: Recorded) -> None:
        fault = self.server.fault
        match behaviour:
            case Sequence():
                self._perform(behaviour.next_step(), record)
            case Delay(seconds=seconds, then=then):
                if fault.stopping.wait(seconds):
                    raise _Stopped
                self._perform(then, record)
            case Wait(event=event, then=then):
                while not event.wait(0.05):
                    if fault.stopping.is_set():
                        raise _Stopped
                self._perform(then, record)
            case Echo(make=make):
                self._perform(make(record, fault), record)
            case Json(document=document, status=status, content_type=content_type):
                headers = {"Set-Cookie": behaviour.set_cookie} if behaviour.set_cookie else {}
                self._send(status, json.dumps(document).encode(), content_type, record, headers)
            case Status(code=code, document=document):
                body = document if document is not None else outcome(f"HTTP {code}")
                self._send(code, json.dumps(body).encode(), FHIR_JSON, record)
            case Raw(body=body, status=status, content_type=content_type):
                self._send(status, body, content_type, record)
            case Huge(size=size, declare_length=declare_length):
                self._stream(size, declare_length, record)
            case Trickle(document=document, interval=interval, piece=piece):
                self._trickle(json.dumps(document).encode(), interval, piece, record)
            case Drop():
                self.close_connection = True

    def _trickle(self, body: bytes, interval: float, piece: int, record: Recorded) -> None:
        self.send_response(200)
        self.send_header("Content-Type", FHIR_JSON)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.flush()
        for start in range(0, len(body), piece):
            if self.server.fault.stopping.wait(interval):
                raise _Stopped
            self.wfile.write(body[start : start + piece])
            self.wfile.flush()
            record.bytes_sent = start + piece

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        record: Recorded,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        record.bytes_sent += len(body)

    def _stream(self, size: int, declare_length: bool, record: Recorded) -> None:
        self.send_response(200)
        self.send_header("Content-Type", FHIR_JSON)
        self.send_header("Connection", "close")
        if declare_length:
            self.send_header("Content-Length", str(size))
        else:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        head = b'{"resourceType": "Bundle", "type": "searchset", "padding": "'
        padding = b"x" * _CHUNK
        written = 0
        while written < size:
            if self.server.fault.stopping.is_set():
                raise _Stopped
            piece = head if written == 0 else padding[: min(_CHUNK, size - written)]
            if declare_length:
                self.wfile.write(piece)
            else:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            written += len(piece)
            record.bytes_sent = written
        if not declare_length:
            self.wfile.write(b"0\r\n\r\n")


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = False  # joined on close; every wait in a handler wakes when stopping
    block_on_close = True

    def __init__(self, fault: FaultServer) -> None:
        self.fault = fault
        super().__init__((LOOPBACK, 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-answer is expected here; nothing to print."""


class FaultServer:
    """The misbehaving server; `with FaultServer() as server:` starts it and stops it."""

    def __init__(self, base_path: str = "/fhir") -> None:
        self.base_path = "/" + base_path.strip("/")
        self.stopping = threading.Event()
        self._routes: dict[str, Behaviour] = {}
        self._requests: list[Recorded] = []
        self._lock = threading.Lock()  # guards routes and records only; never held while waiting
        self._http: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    # Lifecycle.

    def __enter__(self) -> FaultServer:
        self._http = _HttpServer(self)
        self._thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stopping.set()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()  # joins the request threads
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def port(self) -> int:
        assert self._http is not None, "the server is not running"
        return int(self._http.server_address[1])

    @property
    def origin(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def base_url(self) -> str:
        """The FHIR base to name as fhirServer, e.g. http://127.0.0.1:41234/fhir"""
        return f"{self.origin}{self.base_path}"

    def url(self, relative: str) -> str:
        return f"{self.base_url}/{relative.lstrip('/')}"

    # Configuration.

    def route(self, prefix: str, behaviour: Behaviour) -> None:
        """Answer requests whose path and query, relative to the base, start with `prefix`."""
        with self._lock:
            self._routes[prefix.lstrip("/")] = behaviour

    def relative(self, record: Recorded) -> str | None:
        """The request relative to the base: `Patient/1`, `Condition?...`, or `?_getpages=...`
        on the base itself; None when it is not under the base."""
        target = record.target
        if target.startswith(self.base_path + "/"):
            return target[len(self.base_path) + 1 :]
        if target == self.base_path or target.startswith(self.base_path + "?"):
            return target[len(self.base_path) :]
        return None

    def behaviour_for(self, record: Recorded) -> Behaviour:
        relative = self.relative(record)
        with self._lock:
            matches = [
                prefix
                for prefix in self._routes
                if relative is not None and relative.startswith(prefix)
            ]
            if not matches:
                return Status(404, outcome("no such route on the fault server", "not-found"))
            return self._routes[max(matches, key=len)]

    # What happened.

    def record(self, request: Recorded) -> None:
        with self._lock:
            self._requests.append(request)

    @property
    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self._requests)

    def requests_to(self, prefix: str) -> list[Recorded]:
        wanted = prefix.lstrip("/")
        return [r for r in self.requests if (self.relative(r) or "\0").startswith(wanted)]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])
