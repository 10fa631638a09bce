"""Which FHIR servers a hook call can make the service contact (no SSRF through the service).

By name: loopback only by default, a deployment's list otherwise, and an issuer's own servers for
its authenticated calls. By address, when connecting: addresses that are not public only inside a
listed network, and the connection made to the address that was checked. Every server here is on
loopback; names that would resolve elsewhere are given to the service's resolver by the test, and
a recording backend proves no connection to them was even attempted.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest
from conftest import ClientFactory
from pydantic import ValidationError
from support.fault_server import FaultServer, Json
from support.jwt_tokens import SigningKey, bearer, mint, new_es384_key, write_jwks
from support.patients import TWO_LOSSES_ESHRE, Scenario, topics, workup_request

from service.fhir.egress import AddressRefused, CheckedBackend, EgressPolicy, checked_transport
from service.settings import Settings

WORKUP = "/cds-services/rpl-workup"
PUBLIC = "http://cds.test"


def two_losses() -> Scenario:
    return Scenario("two losses").female().miscarriage("2024-01-10").miscarriage("2024-06-02")


def without_conditions(scenario: Scenario, fhir_server: str) -> dict[str, Any]:
    body = workup_request(scenario, fhirServer=fhir_server)
    del body["prefetch"]["conditions"]
    return body


def serve_conditions(server: FaultServer, scenario: Scenario) -> None:
    server.route("Condition?", Json(scenario.searchset(scenario.conditions)))


@pytest.fixture
def fhir() -> Iterator[FaultServer]:
    with FaultServer() as server:
        yield server


@pytest.fixture
def other_fhir() -> Iterator[FaultServer]:
    with FaultServer() as server:
        yield server


def assert_refused(response: httpx.Response, mentions: str) -> None:
    assert response.status_code == 412, response.text
    assert mentions in response.json()["issue"][0]["diagnostics"]


# By name. ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "server",
    [
        "https://fhir.example.org/r4",
        "https://169.254.169.254/latest",
        "https://10.0.0.8/fhir",
        "https://[fd00::1]/fhir",
        "https://[::ffff:10.0.0.8]/fhir",
        "https://0.0.0.0/fhir",
    ],
)
async def test_by_default_only_loopback_servers_may_be_named(
    server: str, client: httpx.AsyncClient
) -> None:
    response = await client.post(WORKUP, json=without_conditions(two_losses(), server))
    assert_refused(response, "allowed hosts")


async def test_a_loopback_server_is_used_by_default(
    make_client: ClientFactory, fhir: FaultServer
) -> None:
    scenario = two_losses()
    serve_conditions(fhir, scenario)
    async with make_client(fhir_allow_http=True) as client:
        response = await client.post(WORKUP, json=without_conditions(scenario, fhir.base_url))
    assert topics(response.json()) == TWO_LOSSES_ESHRE


def test_policy_by_name() -> None:
    policy = EgressPolicy.from_entries(["fhir.example.org", "10.1.0.0/16", "*"], allow_http=False)
    assert policy.server_refusal("https://FHIR.example.org./r4", None) is None
    assert policy.server_refusal("https://any.example.net/r4", None) is None  # `*`
    assert policy.server_refusal("https://10.1.2.3/r4", None) is None  # a listed network
    assert policy.server_refusal("https://10.2.0.1/r4", None) is not None  # `*` is names only
    assert policy.server_refusal("https://93.184.216.34/r4", None) is None  # public, with `*`
    assert policy.server_refusal("http://fhir.example.org/r4", None) == "fhirServer must use https"
    named = EgressPolicy.from_entries(["fhir.example.org"], allow_http=False)
    assert named.server_refusal("https://other.example.org/r4", None) is not None
    issuer = ["https://fhir.example.org/r4"]
    assert named.server_refusal("https://fhir.example.org/r4/", issuer) is None
    assert named.server_refusal("https://fhir.example.org:443/r4/sub", issuer) is None
    assert named.server_refusal("https://fhir.example.org/r4x", issuer) is not None
    assert named.server_refusal("https://fhir.example.org:8443/r4", issuer) is not None


# An issuer's own servers. --------------------------------------------------------------------


@pytest.fixture
def ehr_key() -> SigningKey:
    return new_es384_key("ehr-a-1")


def issuers(tmp_path: Path, key: SigningKey, servers: list[str]) -> dict[str, Any]:
    jwks = str(write_jwks(tmp_path / "a.jwks", key))
    return {"https://ehr-a.example": {"jwks_file": jwks, "fhir_servers": servers}}


async def test_an_issuer_may_name_only_its_own_servers(
    make_client: ClientFactory,
    fhir: FaultServer,
    other_fhir: FaultServer,
    ehr_key: SigningKey,
    tmp_path: Path,
) -> None:
    """EHR A's token, naming EHR B's server (allowed to the deployment as a whole by the default
    loopback list): refused, and B hears nothing. Naming A's own server works."""
    scenario = two_losses()
    serve_conditions(fhir, scenario)
    serve_conditions(other_fhir, scenario)
    settings = {
        "auth_issuers": issuers(tmp_path, ehr_key, [fhir.base_url]),
        "public_base_url": PUBLIC,
        "fhir_allow_http": True,
    }
    async with make_client(**settings) as client:

        async def call(server: str) -> httpx.Response:
            token = mint(ehr_key, iss="https://ehr-a.example", aud=f"{PUBLIC}{WORKUP}")
            return await client.post(
                WORKUP,
                json=without_conditions(scenario, server),
                headers={"authorization": bearer(token)},
            )

        refused = await call(other_fhir.base_url)
        allowed = await call(fhir.base_url)
    assert_refused(refused, "this client may name")
    assert other_fhir.requests == []
    assert topics(allowed.json()) == TWO_LOSSES_ESHRE


# By address, when connecting. ------------------------------------------------------------------


async def test_a_listed_name_on_an_unlisted_private_address_is_not_contacted(
    make_client: ClientFactory, fhir: FaultServer
) -> None:
    """`localhost` is on the list by name, but its address (127.0.0.1) is not public and no
    listed network holds it: the connection is refused, the key reported missing."""
    scenario = two_losses()
    serve_conditions(fhir, scenario)
    by_name = fhir.base_url.replace("127.0.0.1", "localhost")
    async with make_client(fhir_allow_http=True, fhir_allowed_hosts=["localhost"]) as client:
        refused = await client.post(WORKUP, json=without_conditions(scenario, by_name))
    async with make_client(
        fhir_allow_http=True, fhir_allowed_hosts=["localhost", "127.0.0.1"]
    ) as client:
        allowed = await client.post(WORKUP, json=without_conditions(scenario, by_name))
    assert topics(refused.json()) == {"data-incomplete"}
    assert len(fhir.requests) == 1  # only the allowed call's
    assert topics(allowed.json()) == TWO_LOSSES_ESHRE


class RecordingBackend(httpcore.AsyncNetworkBackend):
    """The real backend, remembering every address a connection was opened to."""

    def __init__(self) -> None:
        self.inner = httpcore.AnyIOBackend()
        self.connected: list[str] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connected.append(host)
        return await self.inner.connect_tcp(host, port, timeout, local_address, socket_options)

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def resolving(table: dict[str, list[str]]) -> Any:
    async def resolve(host: str, port: int) -> list[str]:
        return table[host]

    return resolve


POLICY = EgressPolicy.from_entries(["fhir.test", "127.0.0.1"], allow_http=True)


async def fetch(backend: CheckedBackend, url: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=checked_transport(backend, httpx.Limits())) as http:
        return await http.get(url)


async def test_the_connection_goes_to_the_checked_address(fhir: FaultServer) -> None:
    """The name resolves to an unlisted private address first, then to loopback: only the
    loopback address is connected to, and the request still names the host."""
    fhir.route("metadata", Json({"resourceType": "CapabilityStatement"}))
    recorder = RecordingBackend()
    table = {"fhir.test": ["10.9.8.7", "127.0.0.1"]}
    backend = CheckedBackend(POLICY, inner=recorder, resolver=resolving(table))
    url = f"http://fhir.test:{fhir.port}/fhir/metadata"
    response = await fetch(backend, url)
    assert response.status_code == 200
    assert recorder.connected == ["127.0.0.1"]
    assert [r.host for r in fhir.requests] == [f"fhir.test:{fhir.port}"]


@pytest.mark.parametrize(
    "addresses",
    [["169.254.169.254"], ["10.0.0.1", "192.168.1.1"], ["::ffff:169.254.169.254"], ["fe80::1"]],
)
async def test_no_connection_to_an_unlisted_private_address(addresses: list[str]) -> None:
    recorder = RecordingBackend()
    backend = CheckedBackend(POLICY, inner=recorder, resolver=resolving({"fhir.test": addresses}))
    with pytest.raises(httpx.ConnectError) as refused:
        await fetch(backend, "http://fhir.test:8080/fhir/metadata")
    assert isinstance(refused.value.__cause__, AddressRefused)
    assert recorder.connected == []


@pytest.mark.parametrize("entry", ["10.0.0.0/33", "a b", "https://fhir.example.org", "fhir_1.test"])
def test_a_host_entry_that_is_no_host_address_or_network_stops_start_up(entry: str) -> None:
    with pytest.raises(ValidationError, match="fhir_allowed_hosts"):
        Settings(fhir_allowed_hosts=[entry])
