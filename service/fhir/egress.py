"""Which FHIR servers the service may contact, and the connections it makes to them.

A hook call names its own `fhirServer`, and the service then connects there with the EHR's
token: without limits, any caller could make the service reach any host (SSRF), including cloud
metadata and private networks. So:

- by name: the server's host must be on `RPL_CDS_FHIR_ALLOWED_HOSTS` (names, IP addresses or
  networks; `*` for any name; loopback only by default), or, for a call authenticated by an issuer
  that lists `fhir_servers`, under one of that issuer's servers (so that a token from EHR A cannot
  point the service at EHR B's server);
- by address, when connecting: every address is checked, and an address that is not public
  (private, loopback, link-local, reserved, ...) is refused unless a network on the allowed hosts
  holds it. The connection is made to the address that was checked, so a name that resolves
  differently on a second lookup (DNS rebinding) cannot slip past.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ANY_HOST = "*"
_DEFAULT_PORTS = {"http": 80, "https": 443}


class AddressRefused(httpcore.ConnectError):
    """The server's name resolved to no address this deployment allows."""


def _address(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])  # an IPv6 zone is no part of it
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
    return address


def _origin(url: str) -> tuple[str, str, int | None, str]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").rstrip("."), port, parts.path.rstrip("/")


def is_under(url: str, base: str) -> bool:
    """`url` is `base` or a path below it, on the same scheme, host and port."""
    scheme, host, port, path = _origin(url)
    base_scheme, base_host, base_port, base_path = _origin(base)
    return (scheme, host, port) == (base_scheme, base_host, base_port) and (
        path == base_path or path.startswith(base_path + "/")
    )


@dataclass(frozen=True)
class EgressPolicy:
    names: frozenset[str]
    networks: tuple[IPNetwork, ...]
    any_name: bool
    allow_http: bool

    @classmethod
    def from_entries(cls, entries: Iterable[str], allow_http: bool) -> EgressPolicy:
        names: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                names.add(entry.strip().lower().rstrip("."))
        return cls(frozenset(names - {ANY_HOST}), tuple(networks), ANY_HOST in names, allow_http)

    def address_allowed(self, address: IPAddress) -> bool:
        return address.is_global or any(address in network for network in self.networks)

    def server_refusal(self, fhir_server: str, issuer_servers: Sequence[str] | None) -> str | None:
        """Why the service will not contact `fhir_server`, or None when it may (by name; the
        addresses are checked when connecting). `issuer_servers`: the servers the calling
        client's issuer may name, when its configuration lists any."""
        scheme, host, _, _ = _origin(fhir_server)
        if scheme != "https" and not (scheme == "http" and self.allow_http):
            return "fhirServer must use https"
        if issuer_servers:
            if not any(is_under(fhir_server, server) for server in issuer_servers):
                return "fhirServer is not one of the FHIR servers this client may name"
            return None
        if not self._host_listed(host.lower()):
            return "fhirServer is not on this deployment's list of allowed hosts"
        return None

    def _host_listed(self, host: str) -> bool:
        address = _address(host)
        if address is None:
            return self.any_name or host in self.names
        if any(address in network for network in self.networks):
            return True
        return self.any_name and address.is_global


# (host, port) -> the addresses to try, in order; a parameter so that tests can name hosts.
Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class CheckedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, resolving each host name itself and connecting only to
    addresses the policy allows. The pool still keys connections by host name and TLS still
    verifies the name, so nothing else about the connection changes."""

    def __init__(
        self,
        policy: EgressPolicy,
        inner: httpcore.AsyncNetworkBackend | None = None,
        resolver: Resolver = system_resolver,
    ) -> None:
        self._policy = policy
        self._inner = inner or httpcore.AnyIOBackend()
        self._resolve = resolver

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = [host] if _address(host) else await self._lookup(host, port, timeout)
        allowed = [a for a in addresses if self._allowed(a)]
        if not allowed:
            raise AddressRefused("the server's address is not one this deployment may contact")

        async def connect(address: str) -> httpcore.AsyncNetworkStream:
            return await self._inner.connect_tcp(
                address,
                port,
                timeout=timeout,
                local_address=local_address,
                socket_options=socket_options,
            )

        for address in allowed[:-1]:
            try:
                return await connect(address)
            except (httpcore.ConnectError, httpcore.ConnectTimeout):
                continue  # the next address of the same name, as a resolver-driven client would
        return await connect(allowed[-1])

    async def _lookup(self, host: str, port: int, seconds: float | None) -> list[str]:
        try:
            async with asyncio.timeout(seconds):
                return await self._resolve(host, port)
        except (OSError, TimeoutError) as error:
            raise httpcore.ConnectError(
                f"could not resolve the server's name ({type(error).__name__})"
            ) from None

    def _allowed(self, text: str) -> bool:
        address = _address(text)
        return address is not None and self._policy.address_allowed(address)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not used for FHIR servers")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def checked_transport(backend: CheckedBackend, limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    """httpx's transport over `backend`. httpx takes no network backend (httpcore's pool does),
    so the pool's backend is set here, in this one place; the tests connect through the app and
    fail if httpx stops using it."""
    transport = httpx.AsyncHTTPTransport(limits=limits, trust_env=False)
    pool: Any = transport._pool
    pool._network_backend = backend
    return transport
