"""Cards per chart opening over the scenario corpus, before and after repeat suppression.

    python -m bench.cards_per_opening

Every patient-view scenario in `scenarios/` (its record answered as prefetch, as the tests send
it) is opened twice per guideline profile, by the app in-process with a patient key secret set:

1. the first opening: the cards the patient gets today, at every opening;
2. the clinician then overrides each card that offers a reason the knowledge marks
   `suppresses-repeat` with the first such reason, and sends nothing for the others. With
   `--share 1` (the default) every card that can be dealt with is: the upper bound of the
   reduction. With `--share 0.5` half of those cards are (chosen by a hash of the scenario and
   topic, so runs repeat), the others are left alone, as a clinician who takes the suggestion or
   ignores the card does (no reason given, so the card stays);
3. the second opening, with the same record: what is left.

Prints, per profile, the openings, the cards at the first and the second opening (total and mean
per opening), and the topics still shown at the second opening with how often. Only scenarios
whose `expect` lists the profile are counted (those are the corpus each profile is tested on).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

from conftest import running  # noqa: E402
from support.scenario_calls import scenario_request, service_for_hook  # noqa: E402

from service.app import create_app  # noqa: E402
from service.authoring.synthetic import load_scenarios, profiles  # noqa: E402
from service.cdshooks.catalogue import load_catalogue  # noqa: E402
from service.cdshooks.suppression import suppressing_reasons  # noqa: E402
from service.settings import Settings, bundled_knowledge_dirs  # noqa: E402

PROFILES = profiles()
# Synthetic patients only: the key needs no secrecy here.
BENCH_SECRET = "bench-cards-per-opening-0123456789abcdef"  # noqa: S105
# Counts what the knowledge does, not how busy the machine is: a look-up slower than the
# service's default (0.5 s) on a shared machine would show the card and blur the figure.
LOOKUP_TIMEOUT_SECONDS = 10.0
FEEDBACK_AT = "2026-12-08T10:00:00Z"


@dataclass
class Figures:
    profile: str
    openings: int = 0
    first: int = 0
    second: int = 0
    left: Counter[str] = field(default_factory=Counter)

    def row(self) -> str:
        def per(n: int) -> str:
            return f"{n / self.openings:.2f}" if self.openings else "-"

        return (
            f"| {self.profile} | {self.openings} | {self.first} ({per(self.first)}) "
            f"| {self.second} ({per(self.second)}) |"
        )


async def measure(
    profile: str, scenarios: Path, today: date, data_dir: Path, share: float
) -> Figures:
    settings = Settings(
        guideline=profile,
        data_dir=data_dir / profile,
        patient_key_secret=BENCH_SECRET,
        suppression_lookup_timeout_seconds=LOOKUP_TIMEOUT_SECONDS,
    )
    # The profile is a parameter compiled into the plans: load the knowledge with it.
    catalogue = load_catalogue(bundled_knowledge_dirs(), settings.knowledge_parameters)
    reasons = suppressing_reasons(catalogue.knowledge)
    figures = Figures(profile)
    async with running(create_app(settings, catalogue)) as client:
        services = (await client.get("/cds-services")).json()["services"]
        view = service_for_hook(services, "patient-view")
        path = f"/cds-services/{view['id']}"
        for spec in load_scenarios(scenarios):
            if spec.hook != "patient-view" or profile not in spec.expect:
                continue
            first = await _open(client, path, scenario_request(spec, view, today))
            feedback = [
                _dealt_with(card, reasons) for card in first if _chosen(spec.id, card, share)
            ]
            items = [item for item in feedback if item is not None]
            if items:
                answer = await client.post(f"{path}/feedback", json={"feedback": items})
                answer.raise_for_status()
                # Writes this worker's issued cards now (they are batched within 0.2 s).
                (await client.get("/analytics/feedback")).raise_for_status()
            second = await _open(client, path, scenario_request(spec, view, today))
            figures.openings += 1
            figures.first += len(first)
            figures.second += len(second)
            figures.left.update(card["source"].get("topic", {}).get("code", "-") for card in second)
    return figures


async def _open(client: Any, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    answer = await client.post(path, json=body)
    answer.raise_for_status()
    cards: list[dict[str, Any]] = answer.json()["cards"]
    return cards


def _chosen(scenario_id: str, card: dict[str, Any], share: float) -> bool:
    topic = card["source"].get("topic", {}).get("code", "")
    digest = hashlib.sha256(f"{scenario_id}/{topic}".encode()).digest()
    return int.from_bytes(digest[:4], "big") < share * 2**32


def _dealt_with(card: dict[str, Any], reasons: frozenset[tuple[str, str]]) -> dict[str, Any] | None:
    """The clinician's override with the first suppressing reason the card offers, if any."""
    for reason in card.get("overrideReasons", []):
        if (reason.get("system", ""), reason.get("code", "")) in reasons:
            return {
                "card": card["uuid"],
                "outcome": "overridden",
                "overrideReason": {"reason": reason},
                "outcomeTimestamp": FEEDBACK_AT,
            }
    return None


async def main_async(scenarios: Path, today: date, share: float = 1.0) -> list[Figures]:
    with tempfile.TemporaryDirectory(prefix="rpl-cards-per-opening-") as directory:
        return [await measure(p, scenarios, today, Path(directory), share) for p in PROFILES]


def report(results: list[Figures]) -> str:
    lines = [
        "| profile | chart openings | cards, first opening (per opening) "
        "| cards, second opening after overrides (per opening) |",
        "|---|---|---|---|",
        *(figures.row() for figures in results),
        "",
        "Still shown at the second opening (topic: openings):",
    ]
    for figures in results:
        left = ", ".join(f"{topic} {n}" for topic, n in figures.left.most_common())
        lines.append(f"- {figures.profile}: {left or 'none'}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", type=Path, default=ROOT / "scenarios")
    parser.add_argument("--today", type=date.fromisoformat, default=date.today())
    parser.add_argument(
        "--share",
        type=float,
        default=1.0,
        help="share of the cards that can be dealt with that the clinician does deal with",
    )
    args = parser.parse_args()
    print(f"share of dealt-with cards overridden: {args.share}")
    print(report(asyncio.run(main_async(args.scenarios, args.today, args.share))))


if __name__ == "__main__":
    main()
