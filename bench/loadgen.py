"""An HTTP/1.1 keep-alive load generator (wrk-like) on asyncio streams, with uvloop when present.

N connections each send the same pre-built request, wait for the whole answer and send again,
for a warm-up and then a fixed duration. Requests that complete inside the measured window count:
requests per second, latency p50/p99, statuses, and the `Server-Timing` phases the server
reports (per-phase p50; record + apply + encode per request, its p50 and p99; `total` p50 and
p99, and per request `total` less every named phase: the time no phase measures). It runs in its
own process, so that it does not share an event loop (or a core's time slice) with a server.

    python -m bench.loadgen --port 8080 --path /cds-services/rpl-workup --body body.json \
        --connections 8 --duration 5 --warmup 1

prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import resource
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SERVER_PHASES = ("record", "apply", "suppress", "encode")
REQUEST_TIMEOUT = 60.0


@dataclass
class Samples:
    latencies: list[float] = field(default_factory=list)  # seconds
    timings: list[bytes] = field(default_factory=list)  # raw Server-Timing values
    statuses: Counter[int] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)  # connection errors, timeouts


def build_request(
    host: str,
    port: int,
    path: str,
    body: bytes,
    headers: Mapping[str, str] | None = None,
    method: str = "POST",
) -> bytes:
    """The request's bytes; `headers` are added as they are (latin-1, as HTTP/1.1 allows), so a
    benchmark can send odd ones on purpose."""
    head = (
        f"{method} {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "User-Agent: rpl-cds-bench\r\n"
        "Accept: application/json\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
    )
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    return head.encode("ascii") + extra.encode("latin-1") + b"\r\n" + body


@dataclass
class Answer:
    status: int
    headers: dict[bytes, bytes]  # lower-case names; the last value of a repeated header
    body: bytes  # empty unless asked for
    keep_alive: bool


async def read_answer(reader: asyncio.StreamReader, keep_body: bool = False) -> Answer:
    """One HTTP/1.1 response: status, headers, and the body when `keep_body` (else read and
    dropped)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    keep_alive = b"close" not in headers.get(b"connection", b"").lower()
    pieces: list[bytes] = []
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            piece = await reader.readexactly(size + 2)
            if keep_body:
                pieces.append(piece[:-2])
            if size == 0:
                break
    elif length := int(headers.get(b"content-length", b"0")):
        piece = await reader.readexactly(length)
        if keep_body:
            pieces.append(piece)
    return Answer(status, headers, b"".join(pieces), keep_alive)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes | None, bool]:
    """Status, the Server-Timing value (or None), and whether the server keeps the connection."""
    answer = await read_answer(reader)
    return answer.status, answer.headers.get(b"server-timing"), answer.keep_alive


async def _connection(
    host: str, port: int, request: bytes, warm_end: float, end: float, samples: Samples
) -> None:
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.StreamReader | None = None
    try:
        while time.perf_counter() < end:
            if writer is None or reader is None:
                reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            started = time.perf_counter()
            try:
                writer.write(request)
                await writer.drain()
                status, timing, keep_alive = await asyncio.wait_for(
                    read_response(reader), REQUEST_TIMEOUT
                )
            except (TimeoutError, OSError, asyncio.IncompleteReadError) as error:
                samples.failures[type(error).__name__] += 1
                writer.close()
                writer = reader = None
                continue
            finished = time.perf_counter()
            if warm_end <= finished <= end:
                samples.statuses[status] += 1
                if status == 200:
                    samples.latencies.append(finished - started)
                    if timing is not None:
                        samples.timings.append(timing)
            if not keep_alive:
                writer.close()
                writer = reader = None
    finally:
        if writer is not None:
            writer.close()


async def drive(
    host: str, port: int, request: bytes, connections: int, duration: float, warmup: float
) -> Samples:
    samples = Samples()
    start = time.perf_counter()
    warm_end = start + warmup
    end = warm_end + duration
    await asyncio.gather(
        *(_connection(host, port, request, warm_end, end, samples) for _ in range(connections))
    )
    return samples


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of `values` (q in 0..1); None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def parse_timing(value: bytes) -> dict[str, float]:
    """`record;dur=1.2, apply;dur=3.4` -> {"record": 1.2, "apply": 3.4} (milliseconds)."""
    phases = {}
    for item in value.decode("ascii", "replace").split(","):
        name, _, params = item.strip().partition(";")
        for param in params.split(";"):
            key, _, number = param.strip().partition("=")
            if key == "dur":
                phases[name] = float(number)
    return phases


def summarise(samples: Samples, duration: float) -> dict[str, Any]:
    latencies_ms = [s * 1000 for s in samples.latencies]
    parsed = [parse_timing(t) for t in samples.timings]
    names = sorted({name for phases in parsed for name in phases})
    server = [sum(p.get(name, 0.0) for name in SERVER_PHASES) for p in parsed]
    totals = [p["total"] for p in parsed if "total" in p]
    unmeasured = [
        p["total"] - sum(ms for name, ms in p.items() if name != "total")
        for p in parsed
        if "total" in p
    ]
    ok = samples.statuses.get(200, 0)
    return {
        "requests": sum(samples.statuses.values()),
        "ok": ok,
        "rps": ok / duration,
        "statuses": {str(k): v for k, v in sorted(samples.statuses.items())},
        "failures": dict(samples.failures),
        "p50_ms": percentile(latencies_ms, 0.50),
        "p99_ms": percentile(latencies_ms, 0.99),
        "max_ms": max(latencies_ms, default=None),
        "phases_p50_ms": {
            name: percentile([p[name] for p in parsed if name in p], 0.50) for name in names
        },
        "server_p50_ms": percentile(server, 0.50),
        "server_p99_ms": percentile(server, 0.99),
        "total_p50_ms": percentile(totals, 0.50),
        "total_p99_ms": percentile(totals, 0.99),
        "unmeasured_p50_ms": percentile(unmeasured, 0.50),
        "unmeasured_p99_ms": percentile(unmeasured, 0.99),
        "timed_requests": len(parsed),
    }


def measure(
    port: int,
    path: str,
    body_file: Path,
    connections: int,
    duration: float,
    warmup: float,
    host: str = "127.0.0.1",
) -> dict[str, Any]:
    """Run the load generator in a process of its own and return its summary, with the CPU
    seconds it used (call from one thread: it reads the children's resource usage)."""
    command = [sys.executable, "-m", "bench.loadgen", "--host", host, "--port", str(port)]
    command += ["--path", path, "--body", str(body_file), "--connections", str(connections)]
    command += ["--duration", str(duration), "--warmup", str(warmup)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(  # noqa: S603 (our own interpreter and arguments)
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=duration + warmup + REQUEST_TIMEOUT + 30,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed ({done.returncode}):\n{done.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result: dict[str, Any] = json.loads(done.stdout)
    # The generator's own CPU time: evidence that it was not the bottleneck.
    result["client_cpu_seconds"] = (after.ru_utime + after.ru_stime) - (
        before.ru_utime + before.ru_stime
    )
    return result


def _run(coroutine: Coroutine[Any, Any, Samples]) -> Samples:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.loadgen", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--body", type=Path, required=True, help="file with the request body")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args(argv)
    request = build_request(args.host, args.port, args.path, args.body.read_bytes())
    samples = _run(
        drive(args.host, args.port, request, args.connections, args.duration, args.warmup)
    )
    json.dump(summarise(samples, args.duration), sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
