"""Fixtures: the real app (lifespan and all) behind httpx, on a fresh SQLite file per test."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from fastapi import FastAPI
from support.canary import Canary

from service.app import create_app
from service.settings import Settings

if TYPE_CHECKING:
    from support.scenario_calls import ProfileApps

BASE_URL = "http://cds.test"

ClientFactory = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@asynccontextmanager
async def running(app: FastAPI, base_url: str = BASE_URL) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            yield client


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def factory(**overrides: Any) -> Settings:
        overrides.setdefault("data_dir", tmp_path / "data")
        return Settings(**overrides)

    return factory


@pytest.fixture
def make_client(make_settings: Callable[..., Settings]) -> ClientFactory:
    """`async with make_client(guideline="rcog") as client:` — an app built with those settings."""

    def factory(**overrides: Any) -> AbstractAsyncContextManager[httpx.AsyncClient]:
        return running(create_app(make_settings(**overrides)))

    return factory


@pytest.fixture
async def client(make_client: ClientFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client() as http:
        yield http


@pytest.fixture(autouse=True)
def log_canary(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> Iterator[Canary]:
    """Every test: the secrets of every request it sends are collected, and the test fails if a
    log record production would write holds one (support/canary.py)."""
    canary = Canary()
    sync_send, async_send = httpx.Client.send, httpx.AsyncClient.send

    def send(client: httpx.Client, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        canary.read(request)
        return sync_send(client, request, **kwargs)

    async def asend(
        client: httpx.AsyncClient, request: httpx.Request, **kwargs: Any
    ) -> httpx.Response:
        canary.read(request)
        return await async_send(client, request, **kwargs)

    monkeypatch.setattr(httpx.Client, "send", send)
    monkeypatch.setattr(httpx.AsyncClient, "send", asend)
    caplog.set_level(logging.INFO)  # what production logs (RPL_CDS_LOG_LEVEL's default)
    yield canary
    records = [*caplog.get_records("setup"), *caplog.get_records("call")]
    leaks = canary.leaks(records)
    if leaks:
        pytest.fail(f"a token, JWT or patient id was logged: {leaks}", pytrace=False)


@pytest.fixture(scope="module")
async def apps(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ProfileApps]:
    """One app per guideline profile for the module, as `make_client(guideline=profile)` builds
    it (a module that needs other settings defines its own `apps`)."""
    # Imported here: support.scenario_calls imports `running` from this module.
    from support.scenario_calls import ProfileApps

    async with AsyncExitStack() as stack:
        yield ProfileApps(stack, tmp_path_factory)
