"""Contract fuzzing for the reliability benchmark: schemathesis generates requests from the
contract the service serves (`openapi.yaml` plus one operation per service, as
service/cdshooks/contract.py builds it; valid and invalid requests, with NUL, non-ASCII and control
characters in strings) and every check runs on every answer, configured as in
tests/test_schemathesis.py (tests/support/contract_fuzz.py). Unlike that test, which stops at the first failure, this counts:
requests, 5xx, check failures by check.

Rounds over every operation (positive and negative) with a new seed each, until the request
count is reached or the time budget is spent: a small operation (GET /healthz) runs out of
distinct examples fast, a hook call does not. The access tokens and patient ids the generator
sent are kept, to be looked for in the service's log afterwards.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, Phase, given, seed, settings
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.generation import GenerationMode

from bench.bodies import ROOT

# isort: split
# bench.bodies put tests/ on sys.path: the test fuzzes the contract the same way.
from support.contract_fuzz import CHECKS_CONFIG, with_order_selections

SEED = 20_240_501
# A generated secret shorter than this, or made of few characters ("0000"), would also match
# ordinary log text; only distinctive ones are looked for.
SECRET_MIN_LENGTH = 12
SECRET_MIN_DISTINCT = 6
SECRET_FIELDS = ("access_token", "patientId")


def load_schema(services: list[dict[str, Any]]) -> Any:
    from service.cdshooks.contract import served_contract

    contract = yaml.safe_load((ROOT / "openapi.yaml").read_text(encoding="utf-8"))
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "request-timeout": 10,
            "generation": {
                "mode": "all",
                "deterministic": False,
                "allow-x00": True,
                "codec": "utf-8",
            },
            "phases": {"stateful": {"enabled": False}},
            "checks": CHECKS_CONFIG,
        }
    )
    served = with_order_selections(served_contract(contract, services))
    return schemathesis.openapi.from_dict(served, config=config)


@dataclass
class FuzzResult:
    requests: int = 0
    server_errors: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)  # check failure title -> count
    failing_requests: int = 0  # requests with at least one failed check
    transport_errors: Counter[str] = field(default_factory=Counter)
    generation_errors: Counter[str] = field(default_factory=Counter)
    operations: int = 0
    rounds: int = 0
    seconds: float = 0.0
    secrets: set[str] = field(default_factory=set)
    examples: list[str] = field(default_factory=list)  # failing requests as curl commands

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "server_errors": self.server_errors,
            "statuses": dict(sorted(self.statuses.items())),
            "check_failures": dict(self.failures.most_common()),
            "failing_requests": self.failing_requests,
            "transport_errors": dict(self.transport_errors),
            "generation_errors": dict(self.generation_errors),
            "operations": self.operations,
            "rounds": self.rounds,
            "seconds": self.seconds,
            "generated_secrets": sorted(self.secrets),
            "examples": self.examples,
        }


def _strings(value: Any, key: str | None = None) -> Iterator[tuple[str | None, str]]:
    if isinstance(value, dict):
        for name, item in value.items():
            yield from _strings(item, name if isinstance(name, str) else None)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, key)
    elif isinstance(value, str):
        yield key, value


def _distinctive(text: str) -> bool:
    return len(text) >= SECRET_MIN_LENGTH and len(set(text)) >= SECRET_MIN_DISTINCT


def _collect_secrets(case: Any, found: set[str]) -> None:
    """The access tokens and patient ids in a generated request, and its Authorization header."""
    for key, text in _strings(case.body):
        if key in SECRET_FIELDS and _distinctive(text):
            found.add(text)
    for name, value in (case.headers or {}).items():
        if name.lower() == "authorization" and isinstance(value, str) and _distinctive(value):
            found.add(value.removeprefix("Bearer ").strip())


def run(
    base_url: str,
    services: list[dict[str, Any]],
    target: int,
    budget: float,
    seed_offset: int = 0,
) -> FuzzResult:
    """Fuzz the service at `base_url` until `target` requests or `budget` seconds; processes
    fuzzing side by side give different `seed_offset`s."""
    schema = load_schema(services)
    operations = [result.ok() for result in schema.get_all_operations()]
    result = FuzzResult(operations=len(operations))
    session = requests.Session()
    started = time.monotonic()
    deadline = started + budget
    pairs = [(op, mode) for op in operations for mode in GenerationMode]
    for round_number in range(1000):  # bounded; the target or the budget ends it long before
        if result.requests >= target or time.monotonic() >= deadline:
            break
        result.rounds += 1
        per_pair = max(1, math.ceil((target - result.requests) / len(pairs)))
        for index, (operation, mode) in enumerate(pairs):
            if result.requests >= target or time.monotonic() >= deadline:
                break
            _fuzz_one(
                operation,
                mode,
                per_pair,
                SEED + seed_offset + round_number * 1000 + index,
                base_url,
                session,
                result,
                target,
                deadline,
            )
    session.close()
    result.seconds = time.monotonic() - started
    return result


def _fuzz_one(
    operation: Any,
    mode: GenerationMode,
    examples: int,
    run_seed: int,
    base_url: str,
    session: requests.Session,
    result: FuzzResult,
    target: int,
    deadline: float,
) -> None:
    def send(case: Any) -> None:
        if result.requests >= target or time.monotonic() >= deadline:
            return
        _collect_secrets(case, result.secrets)
        try:
            response = case.call(base_url=base_url, session=session)
        except requests.RequestException as error:
            result.requests += 1
            result.transport_errors[type(error).__name__] += 1
            return
        result.requests += 1
        result.statuses[str(response.status_code)] += 1
        if response.status_code >= 500:
            result.server_errors += 1
        try:
            case.validate_response(response)
        except FailureGroup as group:
            _count_failures(result, list(group.exceptions), case, response.status_code)
        except Failure as failure:
            _count_failures(result, [failure], case, response.status_code)

    test = settings(
        max_examples=examples,
        database=None,
        deadline=None,
        derandomize=False,
        phases=[Phase.generate],  # no shrinking: every failure is counted, none is minimised
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )(given(case=operation.as_strategy(generation_mode=mode))(send))
    try:
        seed(run_seed)(test)()
    except Exception as error:  # a generator that cannot produce a case is counted, not fatal
        result.generation_errors[f"{operation.label} {mode.value}: {type(error).__name__}"] += 1


def _count_failures(result: FuzzResult, failures: list[Failure], case: Any, status: int) -> None:
    result.failing_requests += 1
    for failure in failures:
        result.failures[failure.title] += 1
    if len(result.examples) < 5:
        titles = ", ".join(sorted({f.title for f in failures}))
        result.examples.append(
            f"{case.operation.label} -> {status}: {titles}\n{case.as_curl_command()}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """One fuzzing process: the generator is CPU-bound (about 20 requests/s on one core here,
    while the service idles), so the benchmark runs two side by side."""
    parser = argparse.ArgumentParser(prog="bench.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--target", type=int, required=True)
    parser.add_argument("--budget", type=float, required=True, help="seconds")
    parser.add_argument("--seed-offset", type=int, default=0)
    parser.add_argument("--output", type=Path, required=True, help="JSON summary")
    parser.add_argument("--services", type=Path, help="discovery's services (JSON list)")
    args = parser.parse_args(argv)
    if not args.base_url.startswith("http://127.0.0.1:"):
        parser.error("loopback only: --base-url http://127.0.0.1:PORT")
    if args.services is not None:
        services = json.loads(args.services.read_text())
    else:
        from service.cdshooks.catalogue import load_catalogue
        from service.settings import bundled_knowledge_dirs

        services = load_catalogue(bundled_knowledge_dirs()).discovery()["services"]
    result = run(args.base_url, services, args.target, args.budget, args.seed_offset)
    args.output.write_text(json.dumps(result.summary(), indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
