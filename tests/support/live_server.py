"""The real service on a real socket: uvicorn in a background thread on 127.0.0.1.

    with live_server(Settings(data_dir=tmp_path)) as base_url:
        httpx.get(f"{base_url}/cds-services")

The server runs the full ASGI stack (lifespan, middleware, HTTP parsing by uvicorn), so tests see
exactly what a CDS client would. The port is chosen by the OS; the server is stopped and the
thread joined when the block ends, also when the test fails.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from unittest import mock

import uvicorn

from service.app import create_app
from service.settings import Settings

LOOPBACK = "127.0.0.1"


def settings_from_env(env: Mapping[str, str]) -> Settings:
    """Settings as the service would read them from `RPL_CDS_*` variables (lists, nested
    issuer configuration and all), without leaving the variables set afterwards."""
    with mock.patch.dict(os.environ, dict(env)):
        return Settings()


@contextmanager
def live_server(
    settings: Settings | None = None,
    *,
    env: Mapping[str, str] | None = None,
    startup_timeout: float = 20.0,
    shutdown_timeout: float = 10.0,
) -> Iterator[str]:
    """Serve `create_app(settings)` (or settings read from `env`) and yield its base URL,
    e.g. `http://127.0.0.1:54321`. Raises RuntimeError if the app does not start (for example
    when its lifespan fails: the knowledge or the database could not be loaded)."""
    if settings is not None and env is not None:
        raise ValueError("pass settings or env, not both")
    if settings is None:
        settings = settings_from_env(env or {})
    app = create_app(settings)

    # Bound here, before the server starts, so the port is known and cannot be taken by
    # another process in between.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, 0))
    port = sock.getsockname()[1]

    config = uvicorn.Config(
        app,
        lifespan="on",
        log_level="warning",
        access_log=False,
        log_config=None,  # keep the test run's logging configuration
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as error:  # reported to the caller below
            failure.append(error)

    thread = threading.Thread(target=run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the service did not start") from (
                    failure[0] if failure else None
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"the service did not start within {startup_timeout} s")
            time.sleep(0.02)
        yield f"http://{LOOPBACK}:{port}"
    finally:
        server.should_exit = True
        thread.join(shutdown_timeout)
        if thread.is_alive():
            server.force_exit = True
            thread.join(shutdown_timeout)
        sock.close()
