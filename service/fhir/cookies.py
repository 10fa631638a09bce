"""Cookies are never kept by the service's outbound HTTP clients.

One httpx client serves every call, for every patient and every EHR's token. httpx keeps the
cookies a server sets and sends them on later requests, so a session or load-balancer cookie a
FHIR server sets while answering for one patient (and one access token) would travel with the
next call, for someone else. Nothing the service does needs a cookie: none is stored, none sent.
"""

from __future__ import annotations

from http.cookiejar import Cookie, CookieJar, CookiePolicy
from urllib.request import Request


class _RefuseAll(CookiePolicy):
    netscape = True
    rfc2965 = False
    hide_cookie2 = True

    def set_ok(self, cookie: Cookie, request: Request) -> bool:
        return False

    def return_ok(self, cookie: Cookie, request: Request) -> bool:
        return False

    def domain_return_ok(self, domain: str, request: Request) -> bool:
        return False

    def path_return_ok(self, path: str, request: Request) -> bool:
        return False


def cookieless_jar() -> CookieJar:
    """A jar that accepts no cookie: pass it as `httpx.AsyncClient(cookies=...)`."""
    return CookieJar(policy=_RefuseAll())
