"""What a serving worker loads: on a restart (knowledge cache warm, database migrated) with
authentication off, it answers calls without the libraries only other paths need. Each is about
10 MB a worker: the benchmark's RSS target depends on them staying out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# Alembic (migrating), PyJWT and cryptography (authentication), fhir.resources' models
# (validating knowledge the cache has not seen).
OPTIONAL = ["alembic", "jwt", "cryptography", "fhir.resources.R4B"]

_WORKER = """
import asyncio, gc, json, os, sys
import httpx
from service.app import create_worker_app

async def main() -> None:
    os.environ["RPL_CDS_DATA_DIR"] = sys.argv[1]
    app = create_worker_app()
    # What was loaded to serve lives as long as the process: out of the collector's sight.
    assert gc.get_freeze_count() > 100_000, gc.get_freeze_count()
    # Request bodies are freed by reference counting; the collector rarely walks them.
    assert gc.get_threshold()[0] >= 100_000, gc.get_threshold()
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cds.test") as client:
            answer = await client.post(
                "/cds-services/rpl-workup",
                content=sys.argv[2],
                headers={"content-type": "application/json"},
            )
    modules = [name for name in json.loads(sys.argv[3]) if name in sys.modules]
    print(json.dumps({"status": answer.status_code, "loaded": modules}))

asyncio.run(main())
"""


def start_worker(data_dir: Path, body: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", _WORKER, str(data_dir), body, json.dumps(OPTIONAL)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_a_restarted_worker_loads_only_what_serving_needs(tmp_path: Path) -> None:
    from support.patients import Scenario, workup_request

    scenario = Scenario("two").female().miscarriage("2023-02-01").miscarriage("2023-09-01")
    body = json.dumps(workup_request(scenario))
    first = start_worker(tmp_path, body)
    # The first start migrates and validates: it needs them, and the check sees them.
    assert first == {"status": 200, "loaded": ["alembic", "fhir.resources.R4B"]}
    assert start_worker(tmp_path, body) == {"status": 200, "loaded": []}
