"""Run `rpl-cds serve` as a real process on a free loopback port, and stop it afterwards."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveService:
    url: str
    process: subprocess.Popen[str]
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text()


@contextmanager
def live_service(
    data_dir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    ready_timeout: float = 30,
    port: int | None = None,
) -> Iterator[LiveService]:
    """`port`: when the settings must name it before the start (RPL_CDS_PUBLIC_BASE_URL)."""
    port = port or free_port()
    log_path = data_dir / f"serve-{port}.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, "RPL_CDS_DATA_DIR": str(data_dir), **(env or {})}
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(port), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
            text=True,
        )
    service = LiveService(f"http://127.0.0.1:{port}", process, log_path)
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"service exited with {process.returncode}:\n{service.output()}")
            try:
                if httpx.get(f"{service.url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"service not ready in {ready_timeout}s:\n{service.output()}")
            time.sleep(0.1)
        yield service
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
