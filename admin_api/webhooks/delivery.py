"""Sending webhook deliveries: at least once, signed, in creation order per endpoint and key.

Every admin instance runs a ``Sender``. It claims due deliveries with ``FOR UPDATE SKIP
LOCKED`` and a lease (an instance that dies mid-send leaves them to be claimed again once the
lease ends), POSTs each outside any transaction, and records the attempt. A delivery is due
when its endpoint is enabled, its next attempt time has come, and no earlier delivery of the
same endpoint and key is still pending — so a receiver that was down gets each key's events
in the order they happened. Failed attempts are retried with exponential backoff and jitter
until ``give_up_after_s`` after the delivery's first attempt, then it is marked failed; an
endpoint whose every attempt has failed for ``disable_after_s`` (since its first failure after
the last success) is disabled until someone enables it. An attempt is recorded only under the
lease it was made with.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
import time
from dataclasses import dataclass
from datetime import datetime

import aiohttp
import asyncpg
import orjson
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from admin_api.webhooks import signing
from gateway import events
from gateway.database import connect
from gateway.metrics import WEBHOOK_ATTEMPTS
from gateway.settings import WebhookSettings

log = logging.getLogger(__name__)

# Deliveries due now, oldest due first, at most one per endpoint and key (the earliest
# pending), and per endpoint no more than ``$3`` in flight across every instance (counting
# the leases held); claimed for ``$2`` seconds.
CLAIM = """UPDATE webhook_deliveries d SET leased_until = now() + make_interval(secs => $2)
WHERE d.id IN (
    SELECT c.id FROM webhook_deliveries c
    WHERE c.id IN (
        SELECT id FROM (
            SELECT h.id, h.endpoint_id,
                row_number() OVER (PARTITION BY h.endpoint_id
                                   ORDER BY h.next_attempt_at, h.seq) AS nth
            FROM webhook_deliveries h JOIN webhook_endpoints w ON w.id = h.endpoint_id
            WHERE h.state = 'pending' AND h.next_attempt_at <= now() AND w.enabled
              AND (h.leased_until IS NULL OR h.leased_until < now())
              AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e
                              WHERE e.endpoint_id = h.endpoint_id
                                AND e.ordering = h.ordering
                                AND e.state = 'pending' AND e.seq < h.seq)
        ) due
        WHERE due.nth <= $3 - (SELECT count(*) FROM webhook_deliveries l
                               WHERE l.endpoint_id = due.endpoint_id
                                 AND l.leased_until IS NOT NULL AND l.state = 'pending'
                                 AND l.leased_until >= now()))
      -- Again on the row itself: a row another sender claimed since this statement's
      -- snapshot is locked after that claim committed, and re-checked against it.
      AND c.state = 'pending' AND c.next_attempt_at <= now()
      AND (c.leased_until IS NULL OR c.leased_until < now())
    ORDER BY c.next_attempt_at, c.seq LIMIT $1
    FOR UPDATE SKIP LOCKED)
RETURNING d.id, d.leased_until"""
# One delivery taken to be sent now (POST …/retry): a finished one, or a pending one that is
# first in its key's line and that no sender holds; claimed like CLAIM does.
TAKE = """UPDATE webhook_deliveries d SET leased_until = now() + make_interval(secs => $2)
WHERE d.id = $1 AND (d.leased_until IS NULL OR d.leased_until < now())
  AND (d.state <> 'pending' OR NOT EXISTS (
      SELECT 1 FROM webhook_deliveries e WHERE e.endpoint_id = d.endpoint_id
          AND e.ordering = d.ordering AND e.state = 'pending' AND e.seq < d.seq))
RETURNING d.leased_until"""
# Not sent after all (its secret cannot be opened here): looked at again in ``$3`` seconds.
PUT_BACK = """UPDATE webhook_deliveries
SET leased_until = NULL, next_attempt_at = now() + make_interval(secs => $3)
WHERE id = $1 AND leased_until = $2"""
# Why TAKE took nothing: the delivery is being sent, or an earlier one of its key is pending.
BUSY = """SELECT d.leased_until >= now() AS in_flight, (
    SELECT e.id FROM webhook_deliveries e WHERE e.endpoint_id = d.endpoint_id
        AND e.ordering = d.ordering AND e.state = 'pending' AND e.seq < d.seq
    ORDER BY e.seq LIMIT 1) AS first
FROM webhook_deliveries d WHERE d.id = $1"""
# What sending one delivery needs.
LOAD = """SELECT d.id, d.endpoint_id, w.org_id, d.ordering, e.id AS event_id, e.type, e.payload,
    w.url, w.secret, w.secret_sealed, w.previous_secret, w.previous_sealed,
    COALESCE(w.previous_expires_at > now(), false) AS previous_live
FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id
JOIN webhook_endpoints w ON w.id = d.endpoint_id WHERE d.id = $1"""
# One attempt's outcome, recorded only under the lease it was made with (a sender that held
# it too long, past another's claim, records nothing).
FINISH = """UPDATE webhook_deliveries SET attempts = attempts + 1, leased_until = NULL,
    state = $2, next_attempt_at = now() + make_interval(secs => $3),
    finished_at = CASE WHEN $2 = 'pending' THEN NULL ELSE now() END
WHERE id = $1 AND leased_until = $4 RETURNING attempts"""
ATTEMPT = """INSERT INTO webhook_attempts (delivery_id, n, status_code, error, latency_ms)
VALUES ($1, $2, $3, $4, $5)"""
# The delivery as the attempt is recorded; retries are given up ``give_up_after_s`` after its
# first attempt (not its creation: one that waited behind another of its key gets its time).
STATE = """SELECT state, attempts, leased_until,
    COALESCE((SELECT min(a.at) FROM webhook_attempts a WHERE a.delivery_id = d.id), now())
        AS first_attempt_at
FROM webhook_deliveries d WHERE id = $1 FOR UPDATE"""
HEALTHY = "UPDATE webhook_endpoints SET failing_since = NULL WHERE id = $1"
# A delivery was given up: with nothing else pending, nothing is failing any more, and the
# next failure (after a quiet spell, say) starts the count again.
QUIET = """UPDATE webhook_endpoints SET failing_since = NULL WHERE id = $1 AND NOT EXISTS (
    SELECT 1 FROM webhook_deliveries WHERE endpoint_id = $1 AND state = 'pending')"""
# An attempt failed: the endpoint has failed since its first failed attempt after the last
# success (or since it was enabled: that clears failing_since); past the limit it is disabled.
# A success in between (HEALTHY) starts the count again, so one event a receiver keeps
# refusing does not disable an endpoint that takes the others.
FAILING = """UPDATE webhook_endpoints
    SET failing_since = COALESCE(failing_since, now()),
    enabled = enabled AND COALESCE(failing_since, now()) > now() - make_interval(secs => $2),
    disabled_reason = CASE
        WHEN enabled AND COALESCE(failing_since, now()) <= now() - make_interval(secs => $2)
        THEN 'every attempt failed for ' || $2::bigint || ' s' ELSE disabled_reason END,
    updated_at = now()
WHERE id = $1 RETURNING enabled"""
# The delivery finished: the next of its endpoint and key is due now.
NEXT = """UPDATE webhook_deliveries SET next_attempt_at = now()
WHERE id = (SELECT id FROM webhook_deliveries
            WHERE endpoint_id = $1 AND ordering = $2 AND state = 'pending'
            ORDER BY seq LIMIT 1)
  AND next_attempt_at = 'infinity'"""
# Endpoints with a sealed secret that signs: the encryption key of this instance must open it.
SEALED = """SELECT id AS endpoint_id, secret, secret_sealed, previous_secret, previous_sealed,
    COALESCE(previous_expires_at > now(), false) AS previous_live
FROM webhook_endpoints
WHERE secret_sealed OR (previous_sealed AND previous_expires_at > now()) ORDER BY id"""
LISTEN_RETRY_S = 30.0  # a lost LISTEN connection is made again at most this often
BODY_READ_LIMIT = 4096  # what is read of a receiver's answer: only its status matters


def backoff_s(attempts: int, settings: WebhookSettings, rng: random.Random) -> float:
    """The wait after the ``attempts``-th failed attempt: doubling from ``retry_base_s`` up
    to ``retry_max_s``, with "equal jitter" (half fixed, half random) so receivers that come
    back are not hit by every sender at once."""
    ceiling = min(settings.retry_max_s,
                  settings.retry_base_s * float(2 ** min(attempts - 1, 40)))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


NAT64 = ipaddress.ip_network("64:ff9b::/96")


def public_address(host: str) -> bool:
    """A globally routable address — an IPv6 form carrying an IPv4 address (mapped, NAT64,
    6to4, IPv4-compatible) is judged by that IPv4 address."""
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and (address in NAT64 or int(address) >> 32 == 0):
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return embedded.is_global
    return address.is_global


def refuse_host(host: str, allow_private: bool) -> str | None:
    """Why a URL's host is not sent to, or None. Numeric hosts that are not a canonical IP
    address (``2130706433``, ``127.1``, ``0x7f.1``) are refused: the system resolver reads
    them as an address that a check of the name would miss."""
    literal = host.split("%", 1)[0]
    try:
        ipaddress.ip_address(literal)
    except ValueError:
        try:
            socket.inet_aton(host)
        except OSError:
            if not allow_private and (host == "localhost" or host.endswith(".localhost")):
                return (f"{host} is a loopback name (see "
                        "webhooks.allow_private_addresses)")
            return None  # a name: the resolver checks what it resolves to
        return f"{host} is not a canonical IP address; write it as a.b.c.d"
    if not allow_private and not public_address(literal):
        return (f"{host} is a private, loopback or link-local address (see "
                "webhooks.allow_private_addresses)")
    return None


class PublicOnlyResolver(AbstractResolver):
    """Resolves names only to public addresses: a webhook URL must not reach into the
    network Keystile runs in (checked per connection, so DNS re-binding does not help)."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        found = [r for r in await self._inner.resolve(host, port, family)
                 if public_address(r["host"])]
        if not found:
            raise OSError(f"{host} resolves only to private, loopback or link-local "
                          "addresses (see webhooks.allow_private_addresses)")
        return found

    async def close(self) -> None:
        await self._inner.close()


@dataclass(frozen=True, slots=True)
class Outcome:
    status_code: int | None
    error: str | None
    latency_ms: float

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class Sender:
    def __init__(self, pool: asyncpg.Pool, database_url: str, settings: WebhookSettings,
                 box_key: bytes | None, user_agent: str = "Keystile-Webhooks") -> None:
        self.pool, self.database_url = pool, database_url
        self.settings, self.box_key = settings, box_key
        self.user_agent = user_agent
        self.rng = random.Random()  # noqa: S311 - jitter, not a secret
        self._session: aiohttp.ClientSession | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._listener: asyncpg.Connection | None = None  # LISTENs on its own
        self._listen_again_at = 0.0

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            resolver = (None if self.settings.allow_private_addresses
                        else PublicOnlyResolver())
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=resolver, limit=0),
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout_s),
                headers={"User-Agent": self.user_agent})
        return self._session

    async def run(self, stop: asyncio.Event) -> None:
        """Claims and sends until ``stop``; then waits for the sends under way. It looks
        again when woken — a commit that queued deliveries (NOTIFY), a delivery finished
        (the next of its key may be due) — or every ``poll_interval_s``."""
        stopping = asyncio.create_task(self._wake_on(stop))
        try:
            await self.check_secrets()
            while not stop.is_set():
                self._wake.clear()
                await self._listen()
                claimed = 0
                free = self.settings.concurrency - len(self._inflight)
                if free > 0:
                    try:
                        claimed = await self._claim_and_start(free)
                    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError,
                            asyncpg.InternalClientError) as exc:
                        log.warning("webhook deliveries not claimed: %s", type(exc).__name__)
                if claimed and claimed == free:
                    continue  # more may be due at once
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.settings.poll_interval_s)
        finally:
            stopping.cancel()
            if self._inflight:
                await asyncio.gather(*self._inflight, return_exceptions=True)
            await self._unlisten()
            if self._session is not None:
                await self._session.close()

    async def check_secrets(self) -> list[str]:
        """At start-up: the endpoints whose signing secret this instance cannot open (the
        encryption key is missing or another), said once in one line that says what to fix.
        Their deliveries wait, logged again each time one is due."""
        try:
            rows = await self.pool.fetch(SEALED)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("webhook signing secrets not checked: %s", type(exc).__name__)
            return []
        unopened: list[str] = []
        for row in rows:
            try:
                self._secrets(row)
            except signing.SecretUnavailable:
                unopened.append(row["endpoint_id"])
        if unopened:
            why = ("is not set" if self.box_key is None
                   else "is another key than the one they were stored under")
            log.error("the signing secrets of %d webhook endpoint(s) cannot be opened (%s): "
                      "KEYSTILE_ENCRYPTION_KEY %s. Set it to that key; their deliveries "
                      "wait until then.",
                      len(unopened), ", ".join(unopened[:5])
                      + (", …" if len(unopened) > 5 else ""), why)
        return unopened

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()

    def _notified(self, *_: object) -> None:
        self._wake.set()

    async def _listen(self) -> None:
        """A connection of its own kept for LISTEN (not the pool's: it would hold one for
        good); lost, it is made again at most every LISTEN_RETRY_S, and the poll covers the
        gap (and covers for good behind a pooler that does not pass NOTIFY on)."""
        if self._listener is not None and not self._listener.is_closed():
            return
        await self._unlisten()
        now = time.monotonic()
        if now < self._listen_again_at:
            return
        self._listen_again_at = now + LISTEN_RETRY_S
        try:
            conn = await connect(self.database_url, timeout=self.settings.timeout_s,
                                 application_name="keystile webhook listener")
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("webhook senders not listening: %s", type(exc).__name__)
            return
        try:
            await conn.add_listener(events.CHANNEL, self._notified)
        except (OSError, TimeoutError, asyncpg.PostgresError,
                asyncpg.InterfaceError) as exc:
            conn.terminate()
            log.warning("webhook senders not listening: %s", type(exc).__name__)
            return
        self._listener = conn

    async def _unlisten(self) -> None:
        conn, self._listener = self._listener, None
        if conn is not None:
            conn.terminate()  # closing a connection ends its LISTEN; nothing to wait for

    @property
    def lease_s(self) -> float:
        """How long a claim holds a delivery: one attempt, and time to record it."""
        return self.settings.timeout_s + 30

    async def _claim_and_start(self, free: int) -> int:
        rows = await self.pool.fetch(CLAIM, free, self.lease_s, self.settings.per_endpoint)
        for row in rows:
            task = asyncio.create_task(self._deliver(row["id"], row["leased_until"]))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        return len(rows)

    async def _deliver(self, delivery_id: str, lease: datetime) -> None:
        try:
            await self._send(delivery_id, lease)
        except signing.SecretUnavailable as exc:  # ours to fix, not the receiver's
            log.error("webhook delivery %s not sent: %s", delivery_id, exc)
        except Exception as exc:  # the lease ends and it is claimed again
            log.warning("webhook delivery %s not recorded: %s", delivery_id,
                        type(exc).__name__)
        self._wake.set()  # the next delivery of its key may be due now

    async def resend(self, delivery_id: str) -> None:
        """One attempt now (POST …/retry), recorded like any other: the delivery is delivered
        when it succeeds, whatever its state before. A pending delivery is sent only when it
        is first in its key's line and no sender holds it (``Busy`` says which)."""
        for _ in range(2):  # once more if a sender let it go between the two statements
            lease = await self.pool.fetchval(TAKE, delivery_id, self.lease_s)
            if lease is not None:
                await self._send(delivery_id, lease)
                return
            busy = await self.pool.fetchrow(BUSY, delivery_id)
            if busy is None:
                return  # deleted with its endpoint meanwhile
            if busy["first"] is not None:
                raise Busy(f"an earlier delivery about the same key, {busy['first']}, is "
                           "still pending and goes first (events about a key arrive in "
                           "order); retry that one", code="delivery_queued")
            if busy["in_flight"]:
                break
        raise Busy("this delivery is being sent right now; its attempt will be in its "
                   "attempt_log", code="delivery_in_flight")

    async def _send(self, delivery_id: str, lease: datetime) -> None:
        row = await self.pool.fetchrow(LOAD, delivery_id)
        if row is None:
            return  # deleted with its endpoint meanwhile
        try:
            live = self._secrets(row)
        except signing.SecretUnavailable:  # no attempt made, none recorded; tried later
            await self.pool.execute(PUT_BACK, delivery_id, lease, self.lease_s)
            raise
        outcome = await self._post(row, live)
        await self._record(row, outcome, lease)

    def _secrets(self, row: asyncpg.Record) -> list[str]:
        live = [signing.load(row["secret"], row["secret_sealed"], row["endpoint_id"],
                             self.box_key)]
        if row["previous_live"] and row["previous_secret"] is not None:
            live.append(signing.load(row["previous_secret"], row["previous_sealed"],
                                     row["endpoint_id"], self.box_key))
        return live

    async def _post(self, row: asyncpg.Record, live: list[str]) -> Outcome:
        started = time.perf_counter()

        def done(status: int | None, error: str | None) -> Outcome:
            return Outcome(status, error, round((time.perf_counter() - started) * 1000, 3))

        try:
            url = URL(row["url"])
            host = url.raw_host or ""
            refused = refuse_host(host, self.settings.allow_private_addresses)
            if refused:
                return done(None, refused)
            body = orjson.dumps(row["payload"])
            headers = {
                "Content-Type": "application/json",
                signing.HEADER: signing.header(live, int(time.time()), body),
                "Keystile-Event-Id": row["event_id"],
                "Keystile-Event-Type": row["type"],
                "Keystile-Delivery-Id": row["id"],
            }
            async with self._client().post(url, data=body, headers=headers,
                                           allow_redirects=False) as resp:
                await resp.content.read(BODY_READ_LIMIT)
                if 200 <= resp.status < 300:
                    return done(resp.status, None)
                return done(resp.status, f"the receiver answered {resp.status}")
        except TimeoutError:
            return done(None, f"no answer within {self.settings.timeout_s:g} s")
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return done(None, _describe(exc))

    async def _record(self, row: asyncpg.Record, outcome: Outcome, lease: datetime) -> None:
        disabled = False
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(events.QUEUE_LOCK, row["ordering"])
            current = await conn.fetchrow(STATE, row["id"])
            if current is None:
                return  # deleted with its endpoint meanwhile
            if current["leased_until"] != lease:
                # The lease ran out before this attempt was recorded: another sender may
                # have claimed and sent it since; its attempt is the one that counts.
                log.warning("webhook delivery %s: the lease ended before its attempt was "
                            "recorded; the attempt is not recorded", row["id"])
                return
            state, wait = current["state"], 0.0
            if outcome.ok:
                state = "delivered"
                await conn.execute(HEALTHY, row["endpoint_id"])
            elif state == "pending":  # a retry of a finished one says nothing of the endpoint
                age = time.time() - current["first_attempt_at"].timestamp()
                if age >= self.settings.give_up_after_s:
                    state = "failed"
                else:
                    wait = backoff_s(current["attempts"] + 1, self.settings, self.rng)
                disabled = not await conn.fetchval(FAILING, row["endpoint_id"],
                                                   self.settings.disable_after_s)
            attempts = await conn.fetchval(FINISH, row["id"], state, wait, lease)
            await conn.execute(ATTEMPT, row["id"], attempts, outcome.status_code,
                               outcome.error, outcome.latency_ms)
            if state != "pending":
                await conn.execute(NEXT, row["endpoint_id"], row["ordering"])
            if state == "failed" and current["state"] == "pending":
                await conn.execute(QUIET, row["endpoint_id"])
        WEBHOOK_ATTEMPTS.labels(outcome="delivered" if outcome.ok else
                                "failed" if state == "failed" else "retrying").inc()
        if not outcome.ok:
            log.info("webhook delivery %s to endpoint %s of %s: attempt %d failed: %s",
                     row["id"], row["endpoint_id"], row["org_id"], attempts, outcome.error)
        if disabled:
            log.warning("webhook endpoint %s is disabled: its attempts have failed for %g s; "
                        "enable it again with PATCH enabled=true", row["endpoint_id"],
                        self.settings.disable_after_s)


class Busy(Exception):
    """A pending delivery that cannot be sent now: being sent, or behind another."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def _describe(exc: BaseException) -> str:
    """A failed attempt in words for the deliveries list: no traceback, and no text that
    could carry the URL (its query may hold the receiver's own token)."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {exc.os_error.strerror or exc.os_error}"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"bad response: {exc.message}"
    if isinstance(exc, OSError) and not isinstance(exc, aiohttp.ClientError):
        return f"cannot connect: {exc.strerror or exc}"  # the resolver's refusal says why
    return f"failed: {type(exc).__name__}"
