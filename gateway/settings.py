"""Configuration: one TOML file validated by pydantic, with ``KEYSTILE_*`` environment
variables overriding the store URLs and the operator token."""

from __future__ import annotations

import os
import ssl
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway import redisurl, tls
from gateway.credentials import CREDENTIAL_KINDS
from gateway.scopes import is_valid_scope
from gateway.secretbox import parse_key

ENV_OVERRIDES = {
    "KEYSTILE_DATABASE_URL": ("database_url",),
    "KEYSTILE_DATABASE_READ_URL": ("database_read_url",),
    "KEYSTILE_REDIS_URL": ("redis_url",),
    "KEYSTILE_ADMIN_TOKEN": ("admin", "token"),
    "KEYSTILE_JWT_SECRET": ("dialect", "nuxera", "jwt_secret"),
    "KEYSTILE_ENCRYPTION_KEY": ("encryption_key",),
}


MIN_TOKEN_LEN = 16


class ConfigError(Exception):
    """The configuration file or environment is invalid; the message says what to fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_pair(cert_file: str | None, key_file: str | None, cert_name: str, key_name: str
                ) -> None:
    """A certificate and its key are given together, and load (checked at start-up so a bad
    path is a ConfigError, not a worker failing to start)."""
    if (cert_file is None) != (key_file is None):
        given, missing = (cert_name, key_name) if key_file is None else (key_name, cert_name)
        raise ValueError(f"{given} is set but {missing} is not; give both or neither")
    if cert_file is not None and key_file is not None:
        try:
            tls.load_pair(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert_file, key_file)
        except tls.CertificateError as exc:
            raise ValueError(str(exc)) from None


class AdminSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8081, ge=1, le=65535)
    token: str | None = Field(None, min_length=MIN_TOKEN_LEN, description="the operator token")
    request_body_limit: int = Field(1 << 20, ge=1024)
    tls_cert_file: str | None = Field(None, description="PEM certificate chain (leaf first): "
                                      "the admin listener serves HTTPS; reloaded on SIGHUP")
    tls_key_file: str | None = Field(None, description="its PEM private key, unencrypted")

    @model_validator(mode="after")
    def _tls(self) -> AdminSettings:
        _check_pair(self.tls_cert_file, self.tls_key_file, "tls_cert_file", "tls_key_file")
        return self


class StoreSettings(_Strict):
    pool_min_size: int = Field(1, ge=0)
    pool_max_size: int = Field(10, ge=1)
    timeout_s: float = Field(5.0, gt=0)
    redis_max_connections: int = Field(64, ge=2, description="Redis connections per process")


HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class GatewaySettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64)
    tls_cert_file: str | None = Field(None, description="PEM certificate chain (leaf first): "
                                      "the gateway listener serves HTTPS; reloaded on SIGHUP")
    tls_key_file: str | None = Field(None, description="its PEM private key, unencrypted")
    max_body_bytes: int = Field(16 << 20, ge=0, description="larger request bodies get 413")
    max_header_bytes: int = Field(16 << 10, ge=1024, description="all request headers together")
    max_header_count: int = Field(100, ge=8)
    header_timeout_s: float = Field(60.0, gt=0, le=3600, description="a request's headers "
                                    "must arrive within this (else 408 and closed)")
    body_timeout_s: float = Field(60.0, gt=0, le=3600, description="the longest a request "
                                  "body may pause between two reads (else closed)")
    keepalive_timeout_s: float = Field(75.0, gt=0, le=3600, description="an idle keep-alive "
                                       "connection is closed after this")
    max_connections: int | None = Field(
        None, ge=1, description="client connections per worker; by default derived from the "
        "descriptor limit: (RLIMIT_NOFILE - pool_max_size - redis_max_connections - 64) / 2")
    cache_size: int = Field(100_000, ge=0, description="keys cached per worker")
    cache_ttl_s: float = Field(300.0, gt=0, description="how long a worker trusts a cached "
                               "key while it hears the invalidation channel (the backstop)")
    cache_ttl_unsubscribed_s: float = Field(
        1.0, gt=0, description="how long it trusts one while the channel is down (changes "
        "may go unheard then)")
    negative_ttl_s: float = Field(0.5, ge=0, description="how long an unknown key stays unknown")
    redis_cache_ttl_s: int = Field(60, ge=1, description="key records shared through Redis")
    limits_mode: Literal["exact", "fast"] = Field(
        "exact", description="exact: every check-and-spend is one atomic Redis round trip; "
        "fast: workers admit within a small allowance and sync with Redis in batches")
    fast_sync_interval_s: float = Field(0.05, gt=0, le=5, description="fast mode: how often "
                                        "a worker sends what it admitted to Redis")
    fast_unsynced_share: float = Field(
        0.01, ge=0, le=0.25, description="fast mode: the share of each limit a worker may "
        "admit per sync interval without asking Redis (the over-admission bound is "
        "2 × workers × share × limit)")
    usage_flush_interval_s: float = Field(1.0, gt=0, le=60, description="how often usage "
                                          "is written to PostgreSQL (the most that can be lost)")
    metrics: bool = Field(True, description="serve Prometheus /metrics on the gateway "
                          "listener (keep it off the public internet)")
    trusted_proxies: list[IPvAnyNetwork] = Field(
        [], description="load balancers whose X-Forwarded-For/-Proto/-Host are kept "
        "(extended); from anyone else they are replaced")
    rate_limits_without_redis: Literal["local", "closed"] = Field(
        "local", description="local: each worker enforces the windows alone (fail open to "
        "per-worker limits); closed: 503")
    quotas_without_redis: Literal["closed", "open"] = Field(
        "closed", description="closed: keys with a quota or lifetime limit get 503; open: "
        "they pass uncounted")
    upstream_ca_file: str | None = Field(
        None, description="PEM file of the CAs that https:// upstreams' certificates are "
        "verified against, instead of the system store")
    upstream_client_cert_file: str | None = Field(
        None, description="PEM certificate chain the gateway presents to https:// upstreams "
        "that ask for one (mutual TLS)")
    upstream_client_key_file: str | None = Field(None, description="its PEM private key, "
                                                 "unencrypted")

    @field_validator("upstream_ca_file")
    @classmethod
    def _ca_file(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ssl.create_default_context(cafile=value)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"cannot load CA certificates from {value!r} ({exc}); give "
                                 "a readable PEM file") from None
        return value

    @property
    def upstream_client_cert(self) -> tuple[str, str] | None:
        """The client certificate and key files for mutual TLS with upstreams, if set."""
        if self.upstream_client_cert_file is None or self.upstream_client_key_file is None:
            return None
        return self.upstream_client_cert_file, self.upstream_client_key_file

    @model_validator(mode="after")
    def _tls(self) -> GatewaySettings:
        _check_pair(self.tls_cert_file, self.tls_key_file, "tls_cert_file", "tls_key_file")
        _check_pair(self.upstream_client_cert_file, self.upstream_client_key_file,
                    "upstream_client_cert_file", "upstream_client_key_file")
        return self


class RouteSettings(_Strict):
    """One upstream behind a path prefix (longest prefix wins, on segment boundaries)."""

    prefix: str = Field(pattern=r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/\-]*$")
    upstream: str = Field(pattern=r"^https?://[^/?#]+(/[^?#]*)?$")
    strip_prefix: bool = False
    auth: Literal["required", "optional", "none"] = "required"
    scopes: dict[str, list[str]] = {}
    methods: list[str] | None = None
    credentials: str = "x-api-key"
    provider_header: str | None = None
    cost: int = Field(1, ge=0, le=10_000)
    timeout_s: float = Field(30.0, gt=0)
    refund_on_upstream_error: bool = False
    enforce: bool = Field(True, description="false: shadow mode, over-limit requests pass")

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for method, wanted in value.items():
            if method != "*" and method not in HTTP_METHODS:
                raise ValueError(f"unknown method {method!r} (use {', '.join(HTTP_METHODS)} "
                                 "or '*')")
            bad = [s for s in wanted if not is_valid_scope(s)]
            if bad:
                raise ValueError(f"invalid scope(s) {bad} for {method}")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        # A prefix is matched against normalised paths, so it must be one itself.
        from gateway.paths import UNRESERVED, UnsafePath, normalise

        try:
            normal = normalise(value)
        except UnsafePath as exc:
            raise ValueError(str(exc)) from None
        normal = normal.rstrip("/") or "/"  # "/admin/" guards "/admin" too
        # Escapes or sub-delims in a prefix would match one spelling of a path and not the
        # other ('/a,b' vs '/a%2Cb') although upstreams decode both alike.
        if not set(normal) <= UNRESERVED | {"/", "."}:
            raise ValueError("a prefix is made of letters, digits, '-', '.', '_', '~' and '/'")
        if normal != value.rstrip("/") and normal != value:
            raise ValueError(f"write the prefix in normal form: {normal!r}")
        return normal

    @model_validator(mode="after")
    def _optional_without_scopes(self) -> RouteSettings:
        if self.auth == "optional" and self.scopes:
            raise ValueError("a route with auth = \"optional\" cannot require scopes (a caller "
                             "without a key would get more than one with a key); use "
                             "\"required\"")
        return self

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            bad = [m for m in value if m not in HTTP_METHODS]
            if bad:
                raise ValueError(f"unknown method(s) {bad}")
        return value

    @field_validator("credentials")
    @classmethod
    def _credentials(cls, value: str) -> str:
        if value not in CREDENTIAL_KINDS:
            raise ValueError(f"unknown credentials {value!r} (use one of "
                             f"{', '.join(CREDENTIAL_KINDS)})")
        return value


DIALECTS = ("scrubs", "scrubbe", "nuxera", "opendental", "regen")

REGEN_SCOPES = ["orders:read", "orders:write", "products:read", "products:write",
                "inventory:read", "inventory:write", "commissions:read", "webhooks:read",
                "webhooks:write"]


class DialectOptions(_Strict):
    prefix: str = Field("", pattern=r"^(/[A-Za-z0-9._~\-]+)*$",
                        description="moves the dialect's documented paths under this prefix")
    available_scopes: list[str] | None = Field(
        None, description="scopes the dialect accepts (Regen: the seed's nine by default)")
    jwt_secret: str | None = Field(None, min_length=32, description="Nuxera: the HS256 secret "
                                   "of its management JWTs (KEYSTILE_JWT_SECRET overrides)")
    org_claim: str = Field("org", description="Nuxera: the JWT claim holding the "
                           "organisation's provider_id")


class WebhookSettings(_Strict):
    """Sending webhooks (every admin API instance sends; the database shares the work)."""

    timeout_s: float = Field(10.0, gt=0, le=60, description="one delivery attempt, "
                             "connecting included")
    retry_base_s: float = Field(10.0, gt=0, description="the wait after the first failed "
                                "attempt; it doubles after each (with jitter)")
    retry_max_s: float = Field(3600.0, gt=0, description="the longest wait between attempts")
    give_up_after_s: float = Field(86400.0, gt=0, description="a delivery still failing this "
                                   "long after its first attempt is marked failed")
    disable_after_s: float = Field(86400.0, gt=0, description="an endpoint failing every "
                                   "attempt this long (since its last success) is disabled")
    poll_interval_s: float = Field(1.0, gt=0, le=60, description="how often each instance "
                                   "looks for deliveries due when nothing woke it (a commit "
                                   "that queues deliveries does, through NOTIFY)")
    scan_interval_s: float = Field(30.0, gt=0, le=3600, description="how often keys are "
                                   "checked for coming and past expiry")
    concurrency: int = Field(32, ge=1, le=1024, description="deliveries in flight per instance")
    per_endpoint: int = Field(16, ge=1, le=1024, description="deliveries in flight to one "
                              "endpoint, all instances together (a slow receiver cannot take "
                              "every sender's slots)")
    retention_s: float = Field(30 * 86400.0, gt=0, description="finished deliveries and their "
                               "events are kept this long")
    allow_private_addresses: bool = Field(
        False, description="deliver to loopback, private and link-local addresses (off: an "
        "organisation cannot make Keystile probe its own network)")


class Settings(_Strict):
    database_url: str = "postgresql://keystile@127.0.0.1:5432/keystile"
    database_read_url: str | None = Field(
        None, description="a streaming replica the gateway reads keys from on a cache miss "
        "(never staler than the changes it has heard of: else it reads database_url)")
    redis_url: str = "redis://127.0.0.1:6379/0"
    admin: AdminSettings = AdminSettings()
    gateway: GatewaySettings = GatewaySettings()
    stores: StoreSettings = StoreSettings()
    webhooks: WebhookSettings = WebhookSettings()
    routes: list[RouteSettings] = []
    dialects: list[Literal["scrubs", "scrubbe", "nuxera", "opendental", "regen"]] = []
    dialect: dict[str, DialectOptions] = {}
    encryption_key: str | None = Field(None, description="base64 of 32 bytes: encrypts "
                                       "recoverable secrets (KEYSTILE_ENCRYPTION_KEY)")

    @field_validator("encryption_key")
    @classmethod
    def _encryption_key(cls, value: str | None) -> str | None:
        if value is not None:
            parse_key(value)
        return value

    @field_validator("dialect")
    @classmethod
    def _known_dialects(cls, value: dict[str, DialectOptions]) -> dict[str, DialectOptions]:
        unknown = sorted(set(value) - set(DIALECTS))
        if unknown:
            raise ValueError(f"unknown dialect(s) {unknown}; known: {', '.join(DIALECTS)}")
        return value

    def dialect_options(self, name: str) -> DialectOptions:
        return self.dialect.get(name, DialectOptions())

    @field_validator("database_url", "database_read_url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        return redisurl.check(value)


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def load(path: Path | None, environ: dict[str, str] | None = None) -> Settings:
    """Reads ``path`` (optional) and applies environment overrides."""
    env = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    for var, dotted in ENV_OVERRIDES.items():
        if env.get(var):
            target = data
            for part in dotted[:-1]:
                target = target.setdefault(part, {})
                if not isinstance(target, dict):
                    raise ConfigError(f"invalid configuration: {part} must be a table "
                                      f"([{part}]), not a value")
            target[dotted[-1]] = env[var]
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        source = str(path) if path else "the environment"
        raise ConfigError(f"invalid configuration in {source}: {_describe(exc)}") from None
