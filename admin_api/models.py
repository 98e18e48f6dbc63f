"""Request and response models of the admin API. They validate every request and are the
source of the OpenAPI document, so the two cannot drift apart."""

from __future__ import annotations

import math
import re
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)
from pydantic.json_schema import SkipJsonSchema
from typing_extensions import TypeAliasType
from yarl import URL

from admin_api.caps import (
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    MAX_METADATA_KEYS,
    MAX_PROVIDER_ID_LEN,
    MAX_RATE_LIMITS,
    MAX_RAW_KEY_LEN,
    MAX_SCOPE_LEN,
    MAX_SCOPES,
    Cursor,
    ExternalId,
    IntCursor,
    Name,
    NonEmptyName,
)
from gateway.events import DEFAULT_EXPIRING_BEFORE_S, DEFAULT_PERCENT, TYPES
from gateway.keyformat import MAX_PREFIX_LEN, PREFIX_RE
from gateway.scopes import SCOPE_RE
from gateway.verification import PROVIDER_PATTERN

Environment = Literal["production", "staging", "development"]
Status = Literal["active", "paused", "revoked", "expired"]
Scope = Annotated[str, StringConstraints(pattern=SCOPE_RE.pattern, max_length=MAX_SCOPE_LEN)]
Scopes = Annotated[list[Scope], Field(max_length=MAX_SCOPES)]
KeyPrefix = Annotated[str, StringConstraints(pattern=PREFIX_RE.pattern,
                                            max_length=MAX_PREFIX_LEN)]
ProviderId = Annotated[str, StringConstraints(pattern=PROVIDER_PATTERN,
                                             max_length=MAX_PROVIDER_ID_LEN)]
OwnerId = ExternalId


def _storable_json(value: dict[str, Any]) -> dict[str, Any]:
    """What PostgreSQL's jsonb can hold (finite numbers, integers within 64 bits), within the
    metadata caps: every key's metadata travels with it to the gateway and /v1/verify."""

    def walk(item: Any, depth: int) -> None:
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError("numbers must be finite (no NaN or Infinity)")
        if isinstance(item, dict | list):
            if depth > MAX_METADATA_DEPTH:
                raise ValueError(f"must nest objects and arrays at most {MAX_METADATA_DEPTH} "
                                 "levels deep")
            for child in item.values() if isinstance(item, dict) else item:
                walk(child, depth + 1)

    walk(value, 1)
    try:
        size = len(orjson.dumps(value))
    except orjson.JSONEncodeError as exc:
        raise ValueError(f"cannot be stored: {exc}") from None
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"must be at most {MAX_METADATA_BYTES} bytes as compact JSON (this "
                         f"is {size}); keep large data elsewhere and store a reference")
    return value


def _sane_time(value: datetime) -> datetime:
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not 2000 <= utc.year <= 9998:
        raise ValueError("must be a time between the years 2000 and 9998")
    return utc


# A JSON value as metadata keeps it: integers beyond 64 bits (which no store here keeps
# exactly) are numbers like any other, kept as doubles — as JavaScript reads them anyway.
JsonInt = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
MetaValue = TypeAliasType(
    "MetaValue", "bool | JsonInt | float | str | list[MetaValue] | dict[str, MetaValue] | None")
Metadata = Annotated[dict[str, MetaValue], Field(
    max_length=MAX_METADATA_KEYS,
    description=f"any JSON object: at most {MAX_METADATA_BYTES} bytes as compact JSON, nested "
                f"at most {MAX_METADATA_DEPTH} levels deep"), AfterValidator(_storable_json)]
Expiry = Annotated[AwareDatetime, AfterValidator(_sane_time)]
def _integral(value: Any) -> Any:
    """JSON Schema's ``integer`` includes ``319.0``; so do we (strict types refuse 319.5 and
    "319")."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


INTEGRAL = BeforeValidator(_integral)
MAX_COUNT = 2**62  # fits PostgreSQL bigint with room to add
Count = Annotated[int, Field(ge=0, le=MAX_COUNT), INTEGRAL]
Positive = Annotated[int, Field(ge=1, le=MAX_COUNT), INTEGRAL]
# A PATCH field that may be left out but not sent as null: the schema does not offer null.
NotNull = SkipJsonSchema[None]


def _reject_nul(value: Any) -> Any:
    """PostgreSQL cannot store NUL in text or JSON; say so instead of failing later."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("must not contain NUL (\\u0000) characters")
    elif isinstance(value, dict):
        for key, item in value.items():
            _reject_nul(key)
            _reject_nul(item)
    elif isinstance(value, list):
        for item in value:
            _reject_nul(item)
    return value


class Input(BaseModel):
    """Request bodies: strict types ("5" is not a number) and unknown fields are an error, so
    typos are not silently ignored."""

    model_config = ConfigDict(extra="forbid", strict=True)

    _no_nul = field_validator("*", mode="after")(_reject_nul)


class Query(BaseModel):
    """Query strings: every value arrives as text, so numbers and booleans are parsed; unknown
    parameters are an error."""

    model_config = ConfigDict(extra="forbid")

    _no_nul = field_validator("*", mode="after")(_reject_nul)


class Output(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RateLimit(Input):
    limit: Positive
    window_s: Annotated[int, Field(ge=1, le=31 * 86400), INTEGRAL]


RateLimits = Annotated[list[RateLimit], Field(max_length=MAX_RATE_LIMITS)]


class Quota(Input):
    limit: Positive
    period: Literal["day", "week", "month"]


class KeyDefaults(Input):
    """Values a new key of the organisation gets when its create request leaves them out."""

    environment: Environment = "production"
    scopes: Scopes = []
    usage_limit: Count | None = None
    quota: Quota | None = None
    rate_limits: RateLimits = []
    expires_in_s: Annotated[int, Field(ge=1, le=100 * 366 * 86400), INTEGRAL] | None = None


class StoredKeyDefaults(Output):
    """``key_defaults`` as read back: rows written before the caps may exceed them, and an
    organisation must stay readable (and usable) all the same."""

    environment: Environment = "production"
    scopes: list[str] = []
    usage_limit: int | None = None
    quota: Quota | None = None
    rate_limits: list[RateLimit] = []
    expires_in_s: int | None = None


# ---- organisations -------------------------------------------------------------------------

LeadTime = Annotated[int, Field(ge=60, le=90 * 86400), INTEGRAL]
Percent = Annotated[int, Field(ge=1, le=100), INTEGRAL]


class Notifications(Input):
    """When this organisation's webhooks hear of coming expiry and spent limits."""

    expiring_before_s: Annotated[list[LeadTime], Field(max_length=5)] = Field(
        default_factory=lambda: list(DEFAULT_EXPIRING_BEFORE_S),
        description="key.expiring: seconds before expires_at (60 s to 90 days)")
    quota_percent: Annotated[list[Percent], Field(max_length=5)] = Field(
        default_factory=lambda: list(DEFAULT_PERCENT),
        description="quota.threshold: shares of a period quota")
    usage_percent: Annotated[list[Percent], Field(max_length=5)] = Field(
        default_factory=lambda: list(DEFAULT_PERCENT),
        description="usage.threshold: shares of the lifetime usage_limit")


class OrgCreate(Input):
    name: NonEmptyName
    provider_id: ProviderId
    key_prefix: KeyPrefix = "ks_live"
    key_defaults: KeyDefaults = KeyDefaults()
    rate_limits: RateLimits = Field([], description="shared by all keys of the "
                                    "organisation")
    metadata: Metadata = {}
    notifications: Notifications = Notifications()


class OrgUpdate(Input):
    model_config = ConfigDict(json_schema_extra={"minProperties": 1})

    name: NonEmptyName | NotNull = None
    provider_id: ProviderId | NotNull = None
    key_prefix: KeyPrefix | NotNull = None
    key_defaults: KeyDefaults | NotNull = None
    rate_limits: RateLimits | NotNull = None
    metadata: Metadata | NotNull = None
    notifications: Notifications | NotNull = None


class OrgOut(Output):
    id: str
    name: str
    provider_id: str
    key_prefix: str
    key_defaults: StoredKeyDefaults
    rate_limits: list[RateLimit]
    metadata: dict[str, Any]
    notifications: Notifications
    created_at: datetime
    updated_at: datetime


class OwnerLimits(Input):
    """Rate limits shared by all keys of one owner in an organisation."""

    rate_limits: RateLimits


class OwnerLimitsOut(Output):
    org_id: str
    owner_id: str
    rate_limits: list[RateLimit]


class OrgList(Output):
    data: list[OrgOut]
    next_cursor: str | None


class OrgListQuery(Query):
    limit: Annotated[int, Field(ge=1, le=1000)] = 100
    cursor: Cursor | None = None


class OrgDeleteQuery(Query):
    cascade: bool = False


# ---- keys ----------------------------------------------------------------------------------

class KeyCreate(Input):
    org_id: ExternalId | None = Field(None, description="required with the operator token; "
                                      "a root key creates keys in its own organisation")
    owner_id: OwnerId | None = None
    name: Name = ""
    environment: Environment | None = None
    root: bool = False
    scopes: Scopes | None = None
    expires_at: Expiry | None = None
    usage_limit: Count | None = None
    quota: Quota | None = None
    rate_limits: RateLimits | None = None
    metadata: Metadata = {}
    prefix: KeyPrefix | None = Field(None, description="overrides the organisation's key_prefix")
    is_default: bool = False
    recoverable: bool = Field(False, description="also keep the secret, encrypted (needs "
                              "KEYSTILE_ENCRYPTION_KEY), for dialects that list keys in clear")


class KeyUpdate(Input):
    """Only the fields sent change; send null to clear owner_id, expires_at, usage_limit or
    quota."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1})

    name: Name | NotNull = None
    owner_id: OwnerId | None = None
    scopes: Scopes | NotNull = None
    expires_at: Expiry | None = None
    usage_limit: Count | None = None
    quota: Quota | None = None
    rate_limits: RateLimits | NotNull = None
    metadata: Metadata | NotNull = None
    shadow_limits: bool | NotNull = Field(
        default=None, description="true: shadow mode — the key's limits are measured and "
        "reported, but requests over them pass")


class KeyOut(Output):
    id: str
    serial: int
    org_id: str
    owner_id: str | None
    name: str
    environment: Environment
    root: bool
    parent_id: str | None
    scopes: list[str]
    status: Status
    expires_at: datetime | None
    usage_limit: int | None
    usage_count: int
    quota: Quota | None
    rate_limits: list[RateLimit]
    is_default: bool
    metadata: dict[str, Any]
    prefix: str
    recoverable: bool
    shadow_limits: bool
    created_at: datetime
    updated_at: datetime
    last_used_at: datetime | None
    first_used_at: datetime | None
    revoked_at: datetime | None


class KeyCreated(KeyOut):
    key: str = Field(description="the raw key: shown once, never again")


class KeyRotated(KeyCreated):
    previous_expires_at: datetime | None = Field(
        description="until when the previous secret keeps working (null: it stopped at once)")


class KeyList(Output):
    data: list[KeyOut]
    next_cursor: str | None


class KeyListQuery(Query):
    org_id: ExternalId | None = None
    owner_id: ExternalId | None = None
    status: Status | None = None
    search: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = Field(
        default=None, description="keys whose name or owner_id contains this text (any "
        "case), whose display prefix starts with it, or whose id it is")
    environment: Environment | None = None
    root: bool | None = None
    limit: Annotated[int, Field(ge=1, le=1000)] = 100
    cursor: IntCursor | None = None


class RotateRequest(Input):
    grace_seconds: Annotated[int, Field(ge=0, le=30 * 86400), INTEGRAL] = 0


class UsageChange(Input):
    op: Literal["set", "increment", "decrement"]
    value: Count


class QuotaUsage(Output):
    limit: int
    period: str
    used: int
    resets_at: datetime


class RateLimitUsage(Output):
    limit: int
    window_s: int
    remaining: int
    resets_at: datetime | None


class DailyUsage(Output):
    day: date
    count: int


class UsageOut(Output):
    usage_count: int
    usage_limit: int | None
    usage_remaining: int | None
    quota: QuotaUsage | None
    rate_limits: list[RateLimitUsage]
    daily: list[DailyUsage]


SeriesRange = Literal["hour", "day", "30d"]


class UsageSeriesQuery(Query):
    """One key's, one owner's (with ``org_id``, or a root key's own organisation), one
    organisation's, or — for the operator, with none of them — every organisation's."""
    key_id: ExternalId | None = None
    owner_id: ExternalId | None = None
    org_id: ExternalId | None = None
    range: SeriesRange = "hour"


class SeriesCounts(Output):
    requests: int = Field(description="every request of the subject's keys")
    forwarded: int = Field(description="requests the gateway sent to the upstream")
    refused: dict[str, int] = Field(description="requests the gateway answered itself, by "
                                    "error code (rate_limited, usage_exceeded, ...)")
    statuses: dict[str, int] = Field(description="every request, by the HTTP status the "
                                     "client got")


class SeriesPoint(SeriesCounts):
    at: datetime = Field(description="the start of the interval")


class UsageSeries(Output):
    range: SeriesRange
    step_seconds: int
    since: datetime = Field(description="the start of the first point")
    until: datetime = Field(description="the end of the last point (the current one is "
                            "still counting)")
    points: list[SeriesPoint]
    totals: SeriesCounts


class LimitedQuery(Query):
    org_id: ExternalId | None = None
    minutes: Annotated[int, Field(ge=1, le=60)] = 5
    limit: Annotated[int, Field(ge=1, le=100)] = 20


class LimitedKey(Output):
    key_id: str
    org_id: str
    owner_id: str | None
    name: str | None = Field(description="null when the key was deleted since")
    prefix: str | None
    status: str | None
    limited: int = Field(description="requests the gateway answered 429 in the window")
    requests: int = Field(description="every request in the window")


class LimitedList(Output):
    minutes: int
    data: list[LimitedKey]


# ---- verify and audit ----------------------------------------------------------------------

class VerifyRequest(Input):
    key: Annotated[str, StringConstraints(min_length=1, max_length=MAX_RAW_KEY_LEN)]
    scopes: Scopes = []
    cost: Annotated[int, Field(ge=0, le=1_000_000), INTEGRAL] = 1
    provider: ProviderId | None = Field(None, description="when given, the key must belong to "
                                        "the organisation with this provider_id")


class VerifyResult(Output):
    valid: bool
    code: str
    key_id: str | None = None
    org_id: str | None = None
    owner_id: str | None = None
    environment: str | None = None
    scopes: list[str] | None = None
    expires_at: datetime | None = None
    metadata: dict[str, Any] | None = None
    missing_scopes: list[str] | None = None
    usage_remaining: int | None = Field(None, description="lifetime units left, if limited")
    rate_limit_remaining: int | None = Field(None, description="in the tightest window")
    retry_after_s: int | None = Field(None, description="when rate_limited or over quota")


class AuditEntry(Output):
    id: int
    at: datetime
    actor_type: str
    actor_id: str | None
    org_id: str | None
    action: str
    target_type: str
    target_id: str
    changes: dict[str, Any]
    request_id: str | None


class AuditList(Output):
    data: list[AuditEntry]
    next_cursor: str | None


class AuditQuery(Query):
    org_id: ExternalId | None = None
    target_id: ExternalId | None = None
    action: ExternalId | None = None
    limit: Annotated[int, Field(ge=1, le=1000)] = 100
    cursor: IntCursor | None = None


# ---- plumbing ------------------------------------------------------------------------------

# ---- webhooks ------------------------------------------------------------------------------

EventType = Literal[TYPES]  # type: ignore[valid-type]
MAX_WEBHOOK_URL_LEN = 2048


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PORT = r"(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
# What a webhook URL may be, stated once for the validator and the OpenAPI document: http or
# https, a host name or IPv4 address, an optional port, a path and query of printable ASCII.
WEBHOOK_URL_PATTERN = (rf"^https?://{_LABEL}(?:\.{_LABEL})*(?::{_PORT})?"
                       r"(?:[/?][!-\"$-~]*)?$")
_WEBHOOK_URL_RE = re.compile(WEBHOOK_URL_PATTERN)


_PLAIN_URL = ("must be a plain URL: a host name (letters, digits, dots, hyphens) or IPv4 "
              "address, an optional port (1-65535), then a path and query of printable ASCII "
              "(percent-encode anything else)")


def _webhook_url(value: str) -> str:
    try:
        url = URL(value) if "://" in value else None
    except ValueError:  # yarl's own words ("Port out of range 0-65535") are not ours
        raise ValueError(_PLAIN_URL) from None
    if url is None or url.scheme not in ("http", "https") or not url.raw_host:
        raise ValueError("must be an absolute http:// or https:// URL with a host")
    if url.raw_user is not None or url.raw_password is not None:
        raise ValueError("must not carry a user name or password; authenticate the "
                         "receiver by the Keystile-Signature header")
    if "#" in value:
        raise ValueError("must not have a #fragment")
    if not _WEBHOOK_URL_RE.fullmatch(value):
        raise ValueError(_PLAIN_URL)
    return value


WebhookUrl = Annotated[str, StringConstraints(min_length=1, max_length=MAX_WEBHOOK_URL_LEN),
                       AfterValidator(_webhook_url),
                       Field(json_schema_extra={"pattern": WEBHOOK_URL_PATTERN})]
EventTypes = Annotated[list[EventType], Field(min_length=1, max_length=len(TYPES)),
                       AfterValidator(lambda v: list(dict.fromkeys(v)))]


class WebhookCreate(Input):
    url: WebhookUrl
    events: EventTypes = Field(default_factory=lambda: list(TYPES),
                               description="the event types to send (default: all)")
    description: Name = ""
    enabled: bool = True


class WebhookUpdate(Input):
    model_config = ConfigDict(json_schema_extra={"minProperties": 1})

    url: WebhookUrl | NotNull = None
    events: EventTypes | NotNull = None
    description: Name | NotNull = None
    enabled: bool | NotNull = Field(None, description="true re-enables an endpoint disabled "
                                    "for failing")


class WebhookOut(Output):
    id: str
    org_id: str
    url: str
    events: list[str]
    description: str
    enabled: bool
    disabled_reason: str | None
    failing_since: datetime | None
    previous_secret_expires_at: datetime | None = Field(
        description="while in the future, the rolled-out secret still signs beside the new one")
    created_at: datetime
    updated_at: datetime


class WebhookCreated(WebhookOut):
    secret: str = Field(description="the signing secret: shown once, never again")


class WebhookRotate(Input):
    grace_seconds: Annotated[int, Field(ge=0, le=7 * 86400), INTEGRAL] = 86400


class WebhookRotated(WebhookCreated):
    pass


class WebhookList(Output):
    data: list[WebhookOut]
    next_cursor: str | None


class WebhookListQuery(Query):
    limit: Annotated[int, Field(ge=1, le=1000)] = 100
    cursor: Cursor | None = None


DeliveryState = Literal["pending", "delivered", "failed"]


class Attempt(Output):
    n: int
    at: datetime
    status_code: int | None
    error: str | None
    latency_ms: float


class Delivery(Output):
    id: str
    event_id: str
    event_type: str
    key_id: str | None
    state: DeliveryState
    attempts: int
    next_attempt_at: datetime | None = Field(description="when the next attempt is due "
                                             "(pending deliveries only)")
    created_at: datetime
    finished_at: datetime | None
    last_status_code: int | None
    last_latency_ms: float | None
    last_error: str | None
    attempt_log: list[Attempt] = Field(description="every attempt, oldest first")


class DeliveryList(Output):
    data: list[Delivery]
    next_cursor: str | None


class DeliveryListQuery(Query):
    state: DeliveryState | None = None
    limit: Annotated[int, Field(ge=1, le=1000)] = 100
    cursor: IntCursor | None = None


class ErrorDetail(Output):
    code: str
    message: str
    request_id: str
    fields: list[dict[str, str]] | None = None


class ErrorBody(Output):
    error: ErrorDetail


class Health(Output):
    status: str
    checks: dict[str, str] = {}
