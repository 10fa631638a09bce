"""Server processes for the load benchmark: start (timing start to ready), resident memory of
each worker, stop. Linux only (/proc)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
READY_TIMEOUT = 60.0


class ServerError(RuntimeError):
    """A server did not start; the message ends with its output."""


@dataclass
class Server:
    name: str
    workers: int
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    ready_seconds: float = 0.0

    def output(self, tail: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _start(
    name: str,
    command: list[str],
    workers: int,
    port: int,
    log_dir: Path,
    cwd: Path,
    env: Mapping[str, str],
) -> Server:
    log_path = log_dir / f"{name}-w{workers}-{port}.log"
    with log_path.open("wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(  # noqa: S603 (our own interpreter and arguments)
            command, cwd=cwd, env=dict(env), stdout=log, stderr=subprocess.STDOUT
        )
    server = Server(name, workers, port, process, log_path)
    try:
        server.ready_seconds = _wait_ready(server, started)
    except BaseException:
        stop(server)
        raise
    return server


def _wait_ready(server: Server, started: float) -> float:
    """Seconds from starting the process to the first 200 from GET /readyz."""
    deadline = started + READY_TIMEOUT
    while True:
        if server.process.poll() is not None:
            raise ServerError(
                f"{server.name} exited with {server.process.returncode} before it was ready:\n"
                f"{server.output()}"
            )
        connection = http.client.HTTPConnection(LOOPBACK, server.port, timeout=1)
        try:
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                return time.perf_counter() - started
        except OSError:
            pass
        finally:
            connection.close()
        if time.perf_counter() > deadline:
            raise ServerError(f"{server.name} not ready in {READY_TIMEOUT} s:\n{server.output()}")
        time.sleep(0.01)


def start_service(workers: int, data_dir: Path, log_dir: Path, **settings: str) -> Server:
    """`rpl-cds serve` on a free port, with a Server-Timing header, the database in `data_dir`
    and warnings only in the log; `settings` adds RPL_CDS_<NAME> variables."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {
        **os.environ,
        "RPL_CDS_SERVER_TIMING": "true",
        "RPL_CDS_DATA_DIR": str(data_dir),
        "RPL_CDS_LOG_LEVEL": "WARNING",
        **{f"RPL_CDS_{key.upper()}": value for key, value in settings.items()},
    }
    script = Path(sys.executable).parent / "rpl-cds"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "service.cli"]
    command += ["serve", "--host", LOOPBACK, "--port", str(port), "--workers", str(workers)]
    # Run from the data directory: a .env in the checkout does not apply to the benchmark.
    cwd = data_dir if script.is_file() else ROOT
    return _start("service", command, workers, port, log_dir, cwd, env)


def start_floor(workers: int, log_dir: Path) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "bench.floor_app", "--host", LOOPBACK, "--port", str(port)]
    command += ["--workers", str(workers)]
    return _start("floor", command, workers, port, log_dir, ROOT, os.environ)


def start_fhir_stub(data_file: Path, log_dir: Path) -> Server:
    """bench/fhir_stub.py on a free port, serving the resources in `data_file`."""
    port = free_port()
    command = [sys.executable, "-m", "bench.fhir_stub", "--port", str(port)]
    command += ["--data", str(data_file)]
    return _start("fhir-stub", command, 1, port, log_dir, ROOT, os.environ)


def process_tree(server: Server) -> list[int]:
    """The server's process and every process under it (workers, resource tracker)."""
    return [server.process.pid, *_descendants(server.process.pid)]


def stop(server: Server) -> None:
    """SIGTERM (uvicorn shuts its workers down), then SIGKILL to what is left, by pid."""
    children = [(pid, _cmdline(pid)) for pid in _descendants(server.process.pid)]
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=10)
    for pid, cmdline in children:
        # Only a worker that outlived its supervisor (the same command line: not a reused pid).
        if cmdline and _cmdline(pid) == cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields start after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def _descendants(pid: int) -> list[int]:
    tree = _children_map()
    found, pending = [], list(tree.get(pid, []))
    while pending:
        child = pending.pop()
        found.append(child)
        pending.extend(tree.get(child, []))
    return found


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def worker_pids(server: Server) -> list[int]:
    """The processes that serve requests: the main one with one worker, else its spawned
    children (not the supervisor, not multiprocessing's resource tracker)."""
    main = server.process.pid
    if server.workers == 1:
        return [main]
    return sorted(pid for pid in _descendants(main) if b"spawn_main" in _cmdline(pid))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_rss(server: Server) -> dict[str, object]:
    """RSS in MB of each worker process, and of the supervising process when there are
    several workers (uvicorn serves in the main process when there is one)."""
    main = server.process.pid
    supervisor = None if server.workers == 1 else _rss_mb(main)
    return {
        "workers_mb": [_rss_mb(pid) for pid in worker_pids(server)],
        "supervisor_mb": supervisor,
    }


def discovered_services(work: Path, name: str) -> list[dict[str, Any]]:
    """The services and their prefetch templates, from a service started for that alone (loading
    the knowledge in the benchmark's own process would cost seconds and its memory)."""
    service = start_service(1, work / name, work)
    try:
        services: list[dict[str, Any]] = call(service, "GET", "/cds-services")["services"]
    finally:
        stop(service)
    return services


def call(server: Server, method: str, path: str, body: bytes | None = None) -> Any:
    """One request; the JSON answer. RuntimeError unless the status is 200."""
    connection = http.client.HTTPConnection(LOOPBACK, server.port, timeout=120)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError(f"{server.name} {method} {path}: HTTP {response.status} {payload!r}")
        return json.loads(payload)
    finally:
        connection.close()


def card_topics(answer: dict[str, Any]) -> list[str]:
    """The sorted topic codes of a hook answer's cards."""
    return sorted(card["source"].get("topic", {}).get("code", "?") for card in answer["cards"])
