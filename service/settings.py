"""Service settings, read from `RPL_CDS_*` environment variables (and an optional `.env`)."""

from __future__ import annotations

import importlib.util
import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, HttpUrl, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# JWS algorithms the CDS Hooks security section allows a client to sign with. Symmetric (HS*) and
# `none` are excluded by the specification; configuring them is refused rather than ignored.
ASYMMETRIC_ALGORITHMS = frozenset(
    {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA"}
)


# A patient key secret shorter than this could be guessed; patient ids themselves are guessable,
# so the secret is all that keeps a key from being traced back to a patient.
MIN_PATIENT_KEY_SECRET_LENGTH = 32


# Where a FHIR server may be by default: this machine only. Anything else is an operator's choice.
LOOPBACK_HOSTS = ("localhost", "127.0.0.0/8", "::1")


def data_root() -> Path:
    """Where the bundled knowledge and openapi.yaml are: the source checkout (a clone, or an
    editable install), else the `rpl_cds_data` directory that `pip install .` puts beside
    `service`. Looked up by path because `rpl_cds_data` is a namespace package, which
    importlib.resources cannot open under an editable install."""
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "openapi.yaml").is_file():
        return checkout
    spec = importlib.util.find_spec("rpl_cds_data")
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / "openapi.yaml").is_file():
            return Path(location)
    raise RuntimeError("bundled data (openapi.yaml, plandefinitions/) not found; reinstall")


def bundled_knowledge_dirs() -> list[Path]:
    """The PlanDefinitions and mappings shipped with the service."""
    root = data_root()
    return [root / "plandefinitions", root / "mappings"]


def _split_list(value: Any) -> Any:
    """Accept `a,b` as well as a JSON list for list-valued settings (friendlier in env files)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


_HOST_NAME = re.compile(
    r"^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*\.?$"
)


def _host_entry(entry: str) -> bool:
    """A host name, an IPv4/IPv6 address or network (CIDR), or `*`."""
    if entry == "*" or _HOST_NAME.match(entry):
        return True
    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False
    return True


class IssuerConfig(BaseModel):
    """A trusted CDS client (an EHR): where its signing keys come from."""

    jwks_url: HttpUrl | None = None
    jwks_file: Path | None = None
    jku_allowlist: list[str] = Field(default_factory=list)
    # The FHIR servers (base URLs) this client's calls may name as `fhirServer`; when set, it
    # replaces RPL_CDS_FHIR_ALLOWED_HOSTS for this issuer, so one EHR's token cannot point the
    # service at another EHR's server.
    fhir_servers: list[HttpUrl] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_key_source(self) -> IssuerConfig:
        if self.jwks_url is None and self.jwks_file is None and not self.jku_allowlist:
            raise ValueError("an issuer needs jwks_url, jwks_file or a jku_allowlist")
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RPL_CDS_", env_file=".env", extra="ignore", env_nested_delimiter="__"
    )

    # The knowledge's `guideline` parameter (a profile its logic reads as %guideline); its allowed
    # values are knowledge too (a ValueSet, checked at load). Unset: the knowledge's default.
    guideline: str | None = None
    # Values for parameters the knowledge declares (Library.parameter), e.g. lookbacks.
    parameters: dict[str, str | bool | int | float] = Field(default_factory=dict)
    knowledge_dirs: Annotated[list[Path], NoDecode] = Field(default_factory=bundled_knowledge_dirs)
    extra_knowledge_dirs: Annotated[list[Path], NoDecode] = Field(default_factory=list)

    data_dir: Path = Path("data")
    database_url: str | None = None
    auto_migrate: bool = True
    # The database sits in the request path (feedback, the replay cache): an unreachable server
    # must give a prompt 503, not a wait for the OS's TCP timeout. Connecting (PostgreSQL) and each
    # statement, or the wait for another SQLite writer, are bounded; a request's database work
    # ends within the sum of the two.
    database_connect_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    database_statement_timeout_seconds: float = Field(default=3.0, gt=0, le=300)

    auth_issuers: dict[str, IssuerConfig] = Field(default_factory=dict)
    auth_algorithms: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["ES384", "RS384"]
    )
    auth_clock_skew_seconds: int = Field(default=60, ge=0, le=600)
    auth_max_token_lifetime_seconds: int = Field(default=3600, gt=0, le=86400)
    auth_jwks_refresh_seconds: int = Field(default=60, ge=1)
    admin_issuers: Annotated[list[str], NoDecode] = Field(default_factory=list)
    public_base_url: HttpUrl | None = None

    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_body_bytes: int = Field(default=5_000_000, gt=0)
    fhir_time_budget_seconds: float = Field(default=3.0, gt=0, le=60)
    # Guards on the EHR's FHIR server (no SSRF through the service, no unbounded work).
    fhir_allow_http: bool = False
    # Host names, IP addresses or networks (CIDR) a call may name as fhirServer (`*`: any name).
    # Addresses that are not public are contacted only inside a listed address or network.
    fhir_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(LOOPBACK_HOSTS)
    )
    fhir_max_pages: int = Field(default=10, ge=1, le=1000)
    fhir_max_resources: int = Field(default=5000, ge=1)
    fhir_max_response_bytes: int = Field(default=20_000_000, ge=1000)
    return_trace: bool = False
    # A Server-Timing header on hook responses (auth, prefetch, record, apply, encode) and a
    # `total` on every response, for the benchmark and for operators; off by default (it tells
    # callers about the internals).
    server_timing: bool = False
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Net allocations between a serving worker's young garbage collections. CPython's default,
    # 700, makes the collector walk each large parsed body again and again: pauses that set the
    # p99 (service/ops/serving_process.py; `python -m bench.pauses` measures both).
    gc_young_threshold: int = Field(default=100_000, ge=1, le=10_000_000)
    # After SIGTERM: how long requests in progress may take to finish before they are cut off.
    # Below Kubernetes' default terminationGracePeriodSeconds (30), which ends in SIGKILL.
    shutdown_grace_seconds: int = Field(default=20, ge=1, le=600)
    # Calls a worker handles at once; more get 503 with Retry-After at once. A worker's CPU work
    # is serial, so a call beyond this would only wait, on time the EHR may no longer give it.
    max_concurrent_calls: int = Field(default=32, ge=1, le=10_000)
    # Cards a clinician dealt with (overridden with a reason the knowledge marks as suppressing)
    # are left out of the same patient's next chart openings until the facts change or this many
    # days pass. Needs patient_key_secret: without it the service cannot recognise the patient.
    suppression_enabled: bool = True
    suppression_days: int = Field(default=180, ge=1, le=3650)
    # The look-up is in the clinician's click path: a database slower than this shows every card.
    suppression_lookup_timeout_seconds: float = Field(default=0.5, gt=0, le=10)
    # HMAC-SHA256 key for the patient keys the suppression memory is stored under (no patient id
    # is stored). Previous secrets are still matched, so a rotation keeps the memories.
    patient_key_secret: SecretStr | None = None
    patient_key_previous_secrets: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)

    @field_validator(
        "knowledge_dirs",
        "extra_knowledge_dirs",
        "auth_algorithms",
        "admin_issuers",
        "cors_origins",
        "fhir_allowed_hosts",
        "patient_key_previous_secrets",
        mode="before",
    )
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("patient_key_secret", "patient_key_previous_secrets")
    @classmethod
    def _long_secrets(cls, value: SecretStr | list[SecretStr] | None) -> Any:
        secrets = value if isinstance(value, list) else [value] if value is not None else []
        shortest = min((len(secret.get_secret_value()) for secret in secrets), default=None)
        if shortest is not None and shortest < MIN_PATIENT_KEY_SECRET_LENGTH:
            # The value itself is never repeated in the message.
            raise ValueError(
                f"a patient key secret needs at least {MIN_PATIENT_KEY_SECRET_LENGTH} characters "
                "(e.g. `openssl rand -hex 32`)"
            )
        return value

    @field_validator("auth_algorithms")
    @classmethod
    def _asymmetric_only(cls, value: list[str]) -> list[str]:
        refused = [alg for alg in value if alg not in ASYMMETRIC_ALGORITHMS]
        if refused:
            raise ValueError(
                f"algorithms {refused} are not allowed: CDS Hooks forbids 'none' and HMAC; "
                f"choose from {sorted(ASYMMETRIC_ALGORITHMS)}"
            )
        if not value:
            raise ValueError("at least one signing algorithm is required")
        return value

    @field_validator("fhir_allowed_hosts")
    @classmethod
    def _host_entries(cls, value: list[str]) -> list[str]:
        bad = [entry for entry in value if not _host_entry(entry)]
        if bad:
            raise ValueError(
                f"entries {bad} are not host names, IP addresses, networks (CIDR) or '*'"
            )
        return value

    @model_validator(mode="after")
    def _audience_pinned(self) -> Settings:
        # The JWT's `aud` must be this service's own URL. Built from the request, it would follow
        # the Host header, and a token minted for another service with the same path could be
        # replayed here under that Host.
        if self.auth_issuers and self.public_base_url is None:
            raise ValueError(
                "RPL_CDS_PUBLIC_BASE_URL is required when RPL_CDS_AUTH_ISSUERS is set: "
                "it is the URL clients call, which their JWT's aud claim must name"
            )
        return self

    @property
    def auth_enabled(self) -> bool:
        return bool(self.auth_issuers)

    @property
    def suppression_active(self) -> bool:
        return self.suppression_enabled and self.patient_key_secret is not None

    @property
    def all_knowledge_dirs(self) -> list[Path]:
        return [*self.knowledge_dirs, *self.extra_knowledge_dirs]

    @property
    def knowledge_parameters(self) -> dict[str, Any]:
        """Values for the knowledge's parameters: RPL_CDS_PARAMETERS, and RPL_CDS_GUIDELINE as
        the `guideline` parameter when it is set."""
        if self.guideline is None:
            return dict(self.parameters)
        return {**self.parameters, "guideline": self.guideline}

    def parameter_setting(self, parameter: str) -> str:
        """The setting that gave the knowledge's `parameter` its value, to name in an error."""
        return (
            "RPL_CDS_GUIDELINE"
            if parameter == "guideline" and self.guideline
            else ("RPL_CDS_PARAMETERS")
        )

    @property
    def cache_dir(self) -> Path:
        """What loading the knowledge computed, kept between starts (engine/knowledge_cache.py)."""
        return self.data_dir / "cache"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'rpl-cds.db').resolve()}"
