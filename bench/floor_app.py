"""The floor for the load benchmark: the least a CDS Hooks endpoint on this stack can do.

The same framework (FastAPI) and server settings as `rpl-cds serve` (uvicorn with its default
loop and HTTP parser, so uvloop and httptools; a factory; no access log; proxy headers), and an
endpoint that reads the body, parses the JSON (with orjson, the parser the service uses) and
answers one constant card. The service's throughput is reported as a share of this one's.

    python -m bench.floor_app [--host 127.0.0.1] [--port 8081] [--workers 1]
"""

from __future__ import annotations

import argparse
import logging

import orjson
import uvicorn
from fastapi import FastAPI, Request, Response

CARD = orjson.dumps(
    {
        "cards": [
            {
                "uuid": "00000000-0000-4000-8000-000000000000",
                "summary": "Floor: constant card",
                "indicator": "info",
                "source": {"label": "bench floor"},
            }
        ]
    }
)


def create_app() -> FastAPI:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.post("/cds-services/{service_id}")
    async def call_service(service_id: str, request: Request) -> Response:
        body = orjson.loads(await request.body())
        if not isinstance(body, dict):
            return Response(status_code=400)
        return Response(CARD, media_type="application/json")

    @app.get("/readyz")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.floor_app", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    uvicorn.run(
        "bench.floor_app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=logging.WARNING,
        access_log=False,
        proxy_headers=True,
    )


if __name__ == "__main__":
    main()
