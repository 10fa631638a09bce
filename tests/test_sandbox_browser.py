"""End to end in a real browser: the HL7 CDS Hooks Sandbox (the EHR side integration engineers
try a service in) against `rpl-cds serve` with authentication on and a local FHIR server.

The sandbox signs every call with its own key and always names a `jku` on the internet; the
service has the sandbox's public JWKS pinned as a `jwks_file` and must verify without fetching it.
Every browser request to a host other than 127.0.0.1 is blocked (the sandbox reaches for public
servers at start), and the service's own outbound traffic goes to a dead loopback proxy.

Needs Debian's `chromium` (or RPL_CDS_CHROMIUM) and the sandbox build (../shared/tools/
cds-hooks-sandbox/build, or RPL_CDS_SANDBOX_BUILD); skips with a message without them, unless
RPL_CDS_REQUIRE_BROWSER=1 (CI), where their absence fails the run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import httpx
import pytest
from support.fhir_server import FhirServer, sekmet_server
from support.jwt_tokens import SigningKey, bearer, mint, new_es384_key, write_jwks
from support.live_service import LiveService, free_port, live_service
from support.static_site import static_site

REQUIRE_BROWSER_ENV = "RPL_CDS_REQUIRE_BROWSER"
SANDBOX_ISSUER = "https://sandbox.cds-hooks.org"
# The test reads /analytics/feedback as an operator would: with a token of its own admin issuer.
ADMIN_ISSUER = "https://operator.rpl-cds.test"
REPOSITORY = Path(__file__).resolve().parents[1]
DEFAULT_SANDBOX_BUILD = REPOSITORY.parent / "shared" / "tools" / "cds-hooks-sandbox" / "build"
# Patient View: two losses under ESHRE (rpl-workup.json). Rx Sign: three losses, and a draft
# order the sandbox can write from its own medication list that is on the warn list.
PATIENT_VIEW_PATIENT = "rpl-two-losses"
RX_SIGN_PATIENT = "prednisolone-no-reason-three-losses"
RX_SIGN_MEDICATION = "Prednisone 20 MG Oral Tablet"
WAIT_MS = 20_000


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get(REQUIRE_BROWSER_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_BROWSER_ENV}=1)", pytrace=False)
    pytest.skip(reason)


def _chromium() -> str:
    configured = os.environ.get("RPL_CDS_CHROMIUM")
    found = configured or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found or not Path(found).exists():
        _unavailable("Chromium not found: apt-get install chromium, or set RPL_CDS_CHROMIUM")
    return found


def _sandbox_build() -> Path:
    build = Path(os.environ.get("RPL_CDS_SANDBOX_BUILD", DEFAULT_SANDBOX_BUILD))
    if not (build / "index.html").is_file() or not (build / ".well-known/jwks.json").is_file():
        _unavailable(f"CDS Hooks Sandbox build not found at {build}: set RPL_CDS_SANDBOX_BUILD")
    return build


@dataclass
class Stack:
    sandbox: str  # the sandbox's origin
    fhir: FhirServer
    service: LiveService
    admin_key: SigningKey

    def feedback_summary(self) -> dict[str, dict[str, Any]]:
        """GET /analytics/feedback as the operator: per topic code, its counts and reasons."""
        url = f"{self.service.url}/analytics/feedback"
        token = mint(self.admin_key, iss=ADMIN_ISSUER, aud=url)
        response = httpx.get(url, headers={"Authorization": bearer(token)}, timeout=10)
        assert response.status_code == 200, response.text
        return {topic["topic"]: topic for topic in response.json()["topics"]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    build = _sandbox_build()
    _chromium()
    work = tmp_path_factory.mktemp("sandbox-stack")
    admin_key = new_es384_key("operator-1")
    admin_jwks = write_jwks(work / "operator-jwks.json", admin_key)
    port = free_port()
    with static_site(build) as origin, sekmet_server(work / "fhir", open_access=True) as fhir:
        # The README's command for loading the scenario patients.
        # "--token=" form: a random token may start with "-", which argparse would
        # take for an option.
        load = ["load-scenarios", "--fhir-server", fhir.base_url, f"--token={fhir.token}"]
        loaded = subprocess.run(
            [sys.executable, "-m", "service.cli", *load],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert loaded.returncode == 0, loaded.stdout + loaded.stderr
        issuers = {
            # The operator pins the sandbox's public keys; its jku is never fetched.
            SANDBOX_ISSUER: {"jwks_file": str(build / ".well-known" / "jwks.json")},
            ADMIN_ISSUER: {"jwks_file": str(admin_jwks)},
        }
        # Anything the service would send off this machine goes to a dead loopback port.
        dead_proxy = f"http://127.0.0.1:{free_port()}"
        env = {
            "RPL_CDS_AUTH_ISSUERS": json.dumps(issuers),
            "RPL_CDS_ADMIN_ISSUERS": ADMIN_ISSUER,
            "RPL_CDS_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
            "RPL_CDS_CORS_ORIGINS": origin,
            "RPL_CDS_FHIR_ALLOW_HTTP": "true",
            "RPL_CDS_GUIDELINE": "eshre",
            "HTTP_PROXY": dead_proxy,
            "HTTPS_PROXY": dead_proxy,
            "ALL_PROXY": dead_proxy,
            "NO_PROXY": "127.0.0.1",
        }
        with live_service(work / "service", env=env, port=port) as service:
            yield Stack(origin, fhir, service, admin_key)


@dataclass
class Traffic:
    """Every request the browser made, by whether it stayed on 127.0.0.1."""

    allowed: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def browser_page(stack: Stack) -> Iterator[tuple[Any, Traffic]]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]'")
    traffic = Traffic()

    def route(route: Any) -> None:
        url = route.request.url
        if urlsplit(url).hostname == "127.0.0.1":
            traffic.allowed.append(url)
            route.continue_()
        else:
            traffic.blocked.append(url)
            route.abort("blockedbyclient")

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=_chromium(),
            headless=True,
            # A second fence under the request interception: anything the browser itself
            # sends (not the page) goes to a dead proxy unless it is for loopback.
            args=["--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=127.0.0.1"],
        )
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            context.route("**/*", route)
            page = context.new_page()
            yield page, traffic
        finally:
            browser.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sandbox-screens")


def _open(page: Any, stack: Stack, patient: str, screen: str, hook: str) -> dict[str, Any]:
    """Open the sandbox on `screen` for `patient`, with our service as its only CDS service;
    for Patient View, the response of the service's call (the sandbox makes it on opening)."""
    page.goto(f"{stack.sandbox}/index.html")
    settings = {
        "PERSISTED_cdsServices": json.dumps([f"{stack.service.url}/cds-services"]),
        "PERSISTED_hook": hook,
        "PERSISTED_screen": screen,
    }
    page.evaluate(
        "settings => { for (const [k, v] of Object.entries(settings)) localStorage.setItem(k, v) }",
        settings,
    )
    url = f"{stack.sandbox}/index.html?fhirServiceUrl={stack.fhir.base_url}&patientId={patient}"
    if hook != "patient-view":
        page.goto(url)
        return {}
    with page.expect_response(_service_call(stack, "rpl-workup"), timeout=WAIT_MS) as answer:
        page.goto(url)
    response: dict[str, Any] = answer.value.json()
    return response


def _service_call(stack: Stack, service_id: str) -> Any:
    url = f"{stack.service.url}/cds-services/{service_id}"
    return lambda response: response.url == url and response.request.method == "POST"


def _card(page: Any, summary: str) -> Any:
    return page.locator(".MuiCard-root", has_text=summary)


def _topic(card: dict[str, Any]) -> str:
    code: str = card["source"]["topic"]["code"]
    return code


def _only_loopback(traffic: Traffic) -> None:
    assert traffic.allowed, "the browser made no request at all"
    assert all(urlsplit(url).hostname == "127.0.0.1" for url in traffic.allowed)


def _scenario(name: str, scenario_id: str) -> dict[str, Any]:
    document = json.loads((REPOSITORY / "scenarios" / name).read_text(encoding="utf-8"))
    scenario: dict[str, Any] = next(s for s in document["scenarios"] if s["id"] == scenario_id)
    return scenario


def test_patient_view_shows_the_scenario_patients_cards(
    browser_page: tuple[Any, Traffic], stack: Stack, screenshots: Path
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    page, traffic = browser_page

    response = _open(page, stack, PATIENT_VIEW_PATIENT, "patient-view", "patient-view")

    expected = _scenario("rpl-workup.json", PATIENT_VIEW_PATIENT)["expect"]["eshre"]
    assert sorted(_topic(card) for card in response["cards"]) == sorted(expected)
    for card in response["cards"]:
        sync_api.expect(_card(page, card["summary"])).to_be_visible(timeout=WAIT_MS)
    page.screenshot(path=str(screenshots / "patient-view.png"), full_page=True)
    _only_loopback(traffic)


def test_suggestion_and_dismissal_with_a_reason_send_feedback(
    browser_page: tuple[Any, Traffic], stack: Stack, screenshots: Path
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    page, traffic = browser_page
    response = _open(page, stack, PATIENT_VIEW_PATIENT, "patient-view", "patient-view")
    with_suggestions = [card for card in response["cards"] if card.get("suggestions")]
    with_reasons = [card for card in response["cards"] if card.get("overrideReasons")]
    accepted = with_suggestions[0]
    overridden = next(card for card in with_reasons if card["uuid"] != accepted["uuid"])
    reason = overridden["overrideReasons"][0]
    feedback_url = f"{stack.service.url}/cds-services/rpl-workup/feedback"

    def feedback_sent(answer: Any) -> bool:
        return bool(answer.url == feedback_url and answer.request.method == "POST")

    button = _card(page, accepted["summary"]).get_by_role(
        "button", name=accepted["suggestions"][0]["label"]
    )
    with page.expect_response(feedback_sent, timeout=WAIT_MS) as answer:
        button.click()
    assert answer.value.status == 200, answer.value.text()

    card = _card(page, overridden["summary"])
    card.get_by_role("button", name="select dismiss reason").click()
    menu_item = page.get_by_role("menuitem", name=reason["display"])
    sync_api.expect(menu_item).to_be_visible(timeout=WAIT_MS)
    page.screenshot(path=str(screenshots / "dismiss-reasons.png"), full_page=True)
    with page.expect_response(feedback_sent, timeout=WAIT_MS) as answer:
        menu_item.click()
    assert answer.value.status == 200, answer.value.text()
    sync_api.expect(card).to_have_count(0, timeout=WAIT_MS)
    page.screenshot(path=str(screenshots / "after-feedback.png"), full_page=True)

    summary = stack.feedback_summary()
    assert summary[_topic(accepted)]["accepted"] == 1
    assert summary[_topic(overridden)]["overridden"] == 1
    reasons = summary[_topic(overridden)]["overrideReasons"]
    assert [r["reason"] for r in reasons] == [f"{reason['system']}|{reason['code']}"]
    _only_loopback(traffic)


def test_rx_sign_warns_about_a_draft_order_on_the_warn_list(
    browser_page: tuple[Any, Traffic], stack: Stack, screenshots: Path
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    page, traffic = browser_page
    _open(page, stack, RX_SIGN_PATIENT, "rx-sign", "order-sign")

    page.locator("input[name=medication-input]").fill(RX_SIGN_MEDICATION)
    page.get_by_role("button", name=RX_SIGN_MEDICATION, exact=True).click()
    with page.expect_response(
        _service_call(stack, "rpl-order-safety-order-sign"), timeout=WAIT_MS
    ) as answer:
        page.get_by_role("button", name="Sign Order").click()
    cards = answer.value.json()["cards"]

    expected = _scenario("rpl-order-safety.json", RX_SIGN_PATIENT)["expect"]["eshre"]
    assert sorted(_topic(card) for card in cards) == sorted(expected)
    warning = next(card for card in cards if card["indicator"] == "warning")
    sync_api.expect(_card(page, warning["summary"])).to_be_visible(timeout=WAIT_MS)
    page.screenshot(path=str(screenshots / "rx-sign.png"), full_page=True)
    _only_loopback(traffic)


def test_every_request_off_this_machine_was_blocked(
    browser_page: tuple[Any, Traffic], screenshots: Path
) -> None:
    _, traffic = browser_page
    # The sandbox reaches for its public FHIR server and services at start; they are refused.
    assert traffic.blocked, "the sandbox made no outside request: is interception working?"
    assert all(urlsplit(url).hostname != "127.0.0.1" for url in traffic.blocked)
    print(f"screenshots: {screenshots}")
