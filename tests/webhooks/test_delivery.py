"""Delivery: at least once, in order per key after an outage, outside the request path,
given up and disabled after the configured time, private addresses refused."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from admin_api.webhooks.delivery import (
    PublicOnlyResolver,
    backoff_s,
    public_address,
    refuse_host,
)
from gateway import secretbox
from gateway.settings import WebhookSettings
from tests.admin_api.conftest import Admin
from tests.conftest import Stores
from tests.gateway.conftest import eventually
from tests.webhooks.conftest import Received, Receiver, admin_settings, subscribe


class Picky(Receiver):
    """Answers ``status`` to the event types in ``refuse`` and takes every other one."""

    def __init__(self, refuse: set[str], status: int = 400) -> None:
        super().__init__()
        self.refuse, self.refused_status = refuse, status

    async def _handle(self, request: web.Request) -> web.Response:
        received = Received(dict(request.headers), await request.read())
        if received.event["type"] in self.refuse:
            return web.Response(status=self.refused_status)
        self.got.append(received)
        return web.Response(status=204)

def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    settings = WebhookSettings(retry_base_s=10, retry_max_s=3600)
    rng = random.Random(7)
    for attempts, ceiling in ((1, 10), (2, 20), (5, 160), (9, 2560), (10, 3600), (60, 3600)):
        waits = [backoff_s(attempts, settings, rng) for _ in range(200)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits)
        assert max(waits) - min(waits) > ceiling / 4  # jittered, not fixed


def test_public_address() -> None:
    assert public_address("93.184.215.14")
    assert public_address("2606:4700::6810:84e5")
    assert public_address("64:ff9b::5db8:d70e")  # NAT64 of a public address
    for private in ("127.0.0.1", "10.1.2.3", "192.168.0.1", "169.254.169.254", "::1",
                    "fd00::1", "::ffff:127.0.0.1", "0.0.0.0", "100.64.0.1",  # noqa: S104
                    "64:ff9b::a00:1", "2002:a00:1::1", "::7f00:1"):
        assert not public_address(private), private


def test_hosts_refused_before_connecting() -> None:
    assert refuse_host("hooks.example.com", False) is None  # names: the resolver checks
    assert refuse_host("93.184.215.14", False) is None
    assert "private" in (refuse_host("10.0.0.1", False) or "")
    assert refuse_host("10.0.0.1", True) is None
    assert "loopback name" in (refuse_host("localhost", False) or "")
    assert "loopback name" in (refuse_host("api.localhost", False) or "")
    assert refuse_host("localhost", True) is None
    for sneaky in ("2130706433", "127.1", "0x7f.0.0.1", "017700000001"):
        assert "not a canonical IP address" in (refuse_host(sneaky, True) or ""), sneaky


async def _deliveries(admin: Admin) -> list[Any]:
    return await admin.db.fetch(
        "SELECT d.state, d.attempts, e.type, e.key_id FROM webhook_deliveries d "
        "JOIN webhook_events e ON e.id = d.event_id ORDER BY d.seq")


async def test_a_receiver_that_was_down_gets_every_event_in_order_per_key(
        admin: Admin, org: dict[str, Any]) -> None:
    receiver = Receiver()  # not started: connections are refused
    await subscribe(admin, org["id"], receiver.url)
    made = []
    a = await admin.key(org["id"], name="a")
    b = await admin.key(org["id"], name="b")
    made += [(a["id"], "key.created"), (b["id"], "key.created")]
    for action, type_ in (("rotate", "key.rotated"), ("pause", "key.paused"),
                          ("revoke", "key.revoked")):
        for key in (b, a):
            body = {"grace_seconds": 0} if action == "rotate" else None
            await admin.call("POST", f"/v1/keys/{key['id']}/{action}", json=body, expect=200)
            made.append((key["id"], type_))

    async def retried() -> bool:  # both keys' first events have failed more than once
        rows = await _deliveries(admin)
        return all(r["attempts"] >= 2 for r in rows[:2])
    await eventually(retried)
    rows = await _deliveries(admin)
    assert all(r["state"] == "pending" for r in rows)
    # Later events of a key wait behind its first: nothing else was even tried.
    assert [r["attempts"] for r in rows[2:]] == [0] * 6
    errors = await admin.db.fetch("SELECT DISTINCT error FROM webhook_attempts")
    assert [r["error"].split(":")[0] for r in errors] == ["cannot connect"]

    await receiver.start()
    try:
        async def all_in() -> bool:
            return len(receiver.got) >= len(made)
        await eventually(all_in)
    finally:
        await receiver.stop()
    got = [(e["key"]["id"], e["type"]) for e in receiver.events()]
    assert sorted(got) == sorted(made)  # each exactly once
    for key in (a, b):
        assert [t for k, t in got if k == key["id"]] == [t for k, t in made if k == key["id"]]

    async def all_delivered() -> bool:  # the receiver answers before the sender records it
        return {r["state"] for r in await _deliveries(admin)} == {"delivered"}
    await eventually(all_delivered)


async def test_a_slow_receiver_never_slows_the_gateway(
        admin: Admin, org: dict[str, Any], gateway: TestClient, receiver: Receiver) -> None:
    await subscribe(admin, org["id"], receiver.url)
    receiver.gate.clear()  # the receiver holds every delivery until the test lets go
    key = await admin.key(org["id"], scopes=["svc:read"], usage_limit=1000)
    await asyncio.wait_for(receiver.arrived.wait(), 10)  # key.created is being delivered
    statuses = []
    for _ in range(50):
        resp = await gateway.get("/svc/x", headers={"X-API-Key": key["key"],
                                                    "X-Provider": "acme"})
        await resp.read()
        statuses.append(resp.status)
    # Key changes through the admin API are not held up either.
    await admin.call("POST", f"/v1/keys/{key['id']}/pause", expect=200)
    assert statuses == [200] * 50
    assert not receiver.gate.is_set() and receiver.got == []  # all of it while held
    receiver.gate.set()

    async def both() -> bool:
        return len(receiver.got) >= 2
    await eventually(both)
    assert [e["type"] for e in receiver.events()] == ["key.created", "key.paused"]


@pytest.mark.webhooks(give_up_after_s=0.3, disable_after_s=0.3)
async def test_failing_deliveries_are_given_up_and_the_endpoint_disabled(
        admin: Admin, org: dict[str, Any], receiver: Receiver,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="admin_api.webhooks.delivery")
    receiver.status = 500
    endpoint = await subscribe(admin, org["id"], receiver.url)
    await admin.key(org["id"], name="first")

    async def disabled() -> bool:
        return not await admin.db.fetchval(
            "SELECT enabled FROM webhook_endpoints WHERE id = $1", endpoint["id"])
    await eventually(disabled)
    row = await admin.db.fetchrow("SELECT state, attempts FROM webhook_deliveries")
    assert row["state"] == "failed" and row["attempts"] >= 2
    codes = await admin.db.fetch("SELECT DISTINCT status_code, error FROM webhook_attempts")
    assert [(r["status_code"], r["error"]) for r in codes] == [
        (500, "the receiver answered 500")]
    reason = await admin.db.fetchval("SELECT disabled_reason FROM webhook_endpoints")
    assert "failed" in reason
    # Each failed attempt's log line names the endpoint and organisation to look at.
    assert f"to endpoint {endpoint['id']} of {org['id']}: attempt 1 failed: the receiver " \
        "answered 500" in caplog.text
    # While disabled, nothing is queued for it.
    await admin.key(org["id"], name="second")
    assert await admin.db.fetchval("SELECT count(*) FROM webhook_deliveries") == 1
    base = f"/v1/orgs/{org['id']}/webhooks/{endpoint['id']}"
    shown = await admin.call("GET", base, expect=200)
    assert shown["enabled"] is False and "failed" in shown["disabled_reason"]
    failed = (await admin.call("GET", f"{base}/deliveries?state=failed", expect=200))["data"]
    assert len(failed) == 1 and failed[0]["event_type"] == "key.created"
    assert failed[0]["last_status_code"] == 500
    assert failed[0]["attempts"] == len(failed[0]["attempt_log"]) >= 2
    assert all(a["latency_ms"] >= 0 for a in failed[0]["attempt_log"])
    # The receiver is fixed: an operator enables the endpoint and sends the delivery again.
    receiver.status = 200
    enabled = await admin.call("PATCH", base, json={"enabled": True}, expect=200)
    assert enabled["enabled"] and enabled["disabled_reason"] is None
    assert enabled["failing_since"] is None
    retried = await admin.call("POST", f"{base}/deliveries/{failed[0]['id']}/retry",
                               expect=200)
    assert retried["state"] == "delivered" and retried["last_status_code"] == 200
    assert retried["finished_at"] > failed[0]["finished_at"]  # when it was last finished
    assert [e["key"]["name"] for e in receiver.events()] == ["first"]


async def test_names_are_resolved_to_public_addresses_only() -> None:
    """What each connection's resolver does: a name that resolves only to loopback (as a
    public name re-bound to one would) is refused before connecting."""
    resolver = PublicOnlyResolver()
    try:
        with pytest.raises(OSError, match="localhost resolves only to private"):
            await resolver.resolve("localhost", 80)
    finally:
        await resolver.close()


@pytest.mark.webhooks(allow_private_addresses=False)
async def test_private_addresses_are_refused(admin: Admin, org: dict[str, Any],
                                             receiver: Receiver) -> None:
    base = f"/v1/orgs/{org['id']}/webhooks"
    for host, why in [("127.0.0.1", "is a private, loopback or link-local address"),
                      ("10.0.0.5", "is a private, loopback or link-local address"),
                      ("localhost", "is a loopback name"),
                      ("2130706433", "is not a canonical IP address")]:
        body = await admin.call("POST", base, json={"url": f"http://{host}:9/h"}, expect=422)
        assert body["error"]["message"].startswith(f"url: {host} {why}"), body
    endpoint = await subscribe(admin, org["id"], "https://hooks.example.com/in")
    body = await admin.call("PATCH", f"{base}/{endpoint['id']}",
                            json={"url": "http://127.0.0.2:9/h"},
                            expect=422)
    assert "private, loopback" in body["error"]["message"]
    # Registered while private addresses were allowed (or a name that resolves to one now):
    # each delivery is refused before connecting.
    await subscribe(admin, org["id"], "https://hooks.example.com/other")
    await admin.db.execute(
        "UPDATE webhook_endpoints SET url = CASE WHEN id = $1 THEN $2 ELSE $3 END", endpoint["id"],
        receiver.url.replace("127.0.0.1", "localhost"), receiver.url)
    await admin.key(org["id"])

    async def tried() -> bool:
        return await admin.db.fetchval("SELECT count(*) FROM webhook_attempts") >= 2
    await eventually(tried)
    errors = sorted(r["error"] for r in await admin.db.fetch(
        "SELECT error FROM webhook_attempts"))
    assert any("127.0.0.1 is a private, loopback or link-local address" in e for e in errors)
    assert any("localhost is a loopback name" in e for e in errors)
    assert receiver.got == []


@pytest.mark.webhooks(poll_interval_s=60)
async def test_senders_are_woken_by_new_events_and_by_finished_deliveries(
        admin: Admin, org: dict[str, Any], gateway: TestClient, receiver: Receiver) -> None:
    """With a poll a minute apart, every event still goes out at once: the commit that
    queues it wakes the senders, and each delivery done lets the next of its key go."""
    await subscribe(admin, org["id"], receiver.url)
    key = await admin.key(org["id"], scopes=["svc:read"], usage_limit=2)
    for _ in range(2):
        resp = await gateway.get("/svc/x", headers={"X-API-Key": key["key"],
                                                    "X-Provider": "acme"})
        assert resp.status == 200
    await admin.call("POST", f"/v1/keys/{key['id']}/pause", expect=200)
    await admin.call("POST", f"/v1/keys/{key['id']}/revoke", expect=200)

    async def all_five() -> bool:
        return len(receiver.got) >= 5
    await eventually(all_five)
    types = [e["type"] for e in receiver.events()]
    assert types[0] == "key.created" and sorted(types[1:]) == [
        "key.paused", "key.revoked", "usage.threshold", "usage.threshold"]


async def test_an_endpoint_failing_for_a_day_is_disabled_and_counts_again_once_enabled(
        admin: Admin, org: dict[str, Any], receiver: Receiver) -> None:
    receiver.status = 500
    endpoint = await subscribe(admin, org["id"], receiver.url)
    base = f"/v1/orgs/{org['id']}/webhooks/{endpoint['id']}"
    key = await admin.key(org["id"])

    async def failing() -> bool:
        return (await admin.call("GET", base, expect=200))["failing_since"] is not None
    await eventually(failing)
    # As if every attempt since had failed for two days: the next failure disables it.
    await admin.db.execute("UPDATE webhook_endpoints SET failing_since = now() - interval "
                           "'2 days'")
    await admin.call("POST", f"/v1/keys/{key['id']}/pause", expect=200)

    async def disabled() -> bool:
        return (await admin.call("GET", base, expect=200))["enabled"] is False
    await eventually(disabled)
    # Enabled again, it is judged from its next failure on, not from two days ago.
    await admin.call("PATCH", base, json={"enabled": True}, expect=200)
    before = await admin.db.fetchval("SELECT count(*) FROM webhook_attempts")

    async def failed_again() -> bool:
        return await admin.db.fetchval("SELECT count(*) FROM webhook_attempts") >= before + 2
    await eventually(failed_again)
    shown = await admin.call("GET", base, expect=200)
    assert shown["enabled"] is True and shown["failing_since"] is not None


@pytest.mark.webhooks(retry_base_s=3600, retry_max_s=3600)
async def test_one_event_the_receiver_keeps_refusing_does_not_disable_the_endpoint(
        admin: Admin, org: dict[str, Any]) -> None:
    """The receiver answers 400 to one event and takes every other: after a day of retries
    that delivery is given up, but the endpoint, which has not been failing, stays on."""
    receiver = Picky(refuse={"key.paused"})
    await receiver.start()
    try:
        endpoint = await subscribe(admin, org["id"], receiver.url)
        a = await admin.key(org["id"], name="a")
        await admin.call("POST", f"/v1/keys/{a['id']}/pause", expect=200)

        async def refused() -> bool:
            return bool(await admin.db.fetchval(
                "SELECT count(*) FROM webhook_attempts WHERE status_code = 400"))
        await eventually(refused)
        await admin.key(org["id"], name="b")  # others still go through

        async def healthy() -> bool:
            return len(receiver.got) == 2 and await admin.db.fetchval(
                "SELECT failing_since IS NULL FROM webhook_endpoints")
        await eventually(healthy)
        # A day of retries later (its first attempt dated back), the next attempt fails.
        await admin.db.execute("UPDATE webhook_attempts SET at = at - interval '25 hours' "
                               "WHERE status_code = 400")
        await admin.db.execute("UPDATE webhook_deliveries SET next_attempt_at = now() "
                               "WHERE state = 'pending'")
        await admin.db.execute("SELECT pg_notify('keystile_webhooks', '')")

        async def given_up() -> bool:
            return await admin.db.fetchval(
                "SELECT count(*) FROM webhook_deliveries WHERE state = 'failed'") == 1
        await eventually(given_up)
        base = f"/v1/orgs/{org['id']}/webhooks/{endpoint['id']}"
        shown = await admin.call("GET", base, expect=200)
        assert shown["enabled"] is True and shown["disabled_reason"] is None
        # With nothing left pending nothing is failing: a blip days later (one 503 on the
        # next event) does not find a count running since the given-up delivery.
        assert shown["failing_since"] is None
        receiver.refuse, receiver.refused_status = {"key.created"}, 503
        await admin.key(org["id"], name="c")

        async def blipped() -> bool:
            return bool(await admin.db.fetchval(
                "SELECT count(*) FROM webhook_attempts WHERE status_code = 503"))
        await eventually(blipped)
        assert (await admin.call("GET", base, expect=200))["enabled"] is True
    finally:
        await receiver.stop()


async def test_a_delivery_that_waited_behind_others_gets_its_own_day_of_retries(
        admin: Admin, org: dict[str, Any], receiver: Receiver) -> None:
    receiver.status = 503
    await subscribe(admin, org["id"], receiver.url)
    await admin.key(org["id"])
    # Created two days ago, as if it had waited behind an earlier delivery of its key.
    await admin.db.execute("UPDATE webhook_deliveries SET created_at = now() - interval "
                           "'2 days'")

    async def retried() -> bool:
        return await admin.db.fetchval("SELECT attempts FROM webhook_deliveries") >= 3
    await eventually(retried)
    assert await admin.db.fetchval("SELECT state FROM webhook_deliveries") == "pending"


@pytest.mark.webhooks(retry_base_s=3600, retry_max_s=3600)
async def test_a_retry_keeps_a_keys_events_in_order(
        admin: Admin, org: dict[str, Any]) -> None:
    receiver = Picky(refuse={"key.created"}, status=500)
    await receiver.start()
    try:
        endpoint = await subscribe(admin, org["id"], receiver.url)
        key = await admin.key(org["id"])

        async def refused() -> bool:
            return bool(await admin.db.fetchval("SELECT count(*) FROM webhook_attempts"))
        await eventually(refused)
        await admin.call("POST", f"/v1/keys/{key['id']}/pause", expect=200)
        ids = {r["type"]: r["id"] for r in await admin.db.fetch(
            "SELECT e.type, d.id FROM webhook_deliveries d "
            "JOIN webhook_events e ON e.id = d.event_id")}
        base = f"/v1/orgs/{org['id']}/webhooks/{endpoint['id']}/deliveries"
        queued = await admin.call("POST", f"{base}/{ids['key.paused']}/retry", expect=409)
        assert queued["error"]["code"] == "delivery_queued"
        assert ids["key.created"] in queued["error"]["message"]
        receiver.refuse = set()
        sent = await admin.call("POST", f"{base}/{ids['key.created']}/retry", expect=200)
        assert sent["state"] == "delivered"

        async def both() -> bool:
            return len(receiver.got) == 2
        await eventually(both)
        assert [e["type"] for e in receiver.events()] == ["key.created", "key.paused"]
    finally:
        await receiver.stop()


async def test_a_delivery_being_sent_is_not_sent_again_by_a_retry(
        admin: Admin, org: dict[str, Any], receiver: Receiver) -> None:
    endpoint = await subscribe(admin, org["id"], receiver.url)
    receiver.gate.clear()  # the receiver holds the delivery
    await admin.key(org["id"])
    await asyncio.wait_for(receiver.arrived.wait(), 10)
    delivery_id = await admin.db.fetchval("SELECT id FROM webhook_deliveries")
    busy = await admin.call(
        "POST", f"/v1/orgs/{org['id']}/webhooks/{endpoint['id']}/deliveries/{delivery_id}"
        "/retry", expect=409)
    assert busy["error"]["code"] == "delivery_in_flight"
    receiver.gate.set()

    async def delivered() -> bool:
        return await admin.db.fetchval("SELECT state FROM webhook_deliveries") == "delivered"
    await eventually(delivered)
    assert len(receiver.got) == 1
    assert await admin.db.fetchval("SELECT count(*) FROM webhook_attempts") == 1


async def test_a_secret_this_instance_cannot_open_is_not_the_receivers_failure(
        admin: Admin, org: dict[str, Any], receiver: Receiver,
        caplog: pytest.LogCaptureFixture) -> None:
    endpoint = await subscribe(admin, org["id"], receiver.url)
    # As if stored under an encryption key this instance was not given.
    await admin.db.execute("UPDATE webhook_endpoints SET secret_sealed = true")
    await admin.key(org["id"])

    async def logged() -> bool:
        return any("KEYSTILE_ENCRYPTION_KEY" in r.getMessage() for r in caplog.records)
    await eventually(logged)
    row = await admin.db.fetchrow("SELECT id, state, attempts FROM webhook_deliveries")
    assert (row["state"], row["attempts"]) == ("pending", 0) and receiver.got == []
    assert (await admin.call("GET", f"/v1/orgs/{org['id']}/webhooks/{endpoint['id']}",
                             expect=200))["enabled"]
    body = await admin.call(
        "POST", f"/v1/orgs/{org['id']}/webhooks/{endpoint['id']}/deliveries/{row['id']}/retry",
        expect=409)
    assert body["error"]["code"] == "encryption_key_missing"
    assert endpoint["secret"] not in caplog.text


async def test_an_instance_says_at_start_which_signing_secrets_it_cannot_open(
        admin: Admin, org: dict[str, Any], stores: Stores, another_admin: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    endpoint = await subscribe(admin, org["id"], "http://127.0.0.1:9/hooks")
    await admin.db.execute("UPDATE webhook_endpoints SET secret_sealed = true")
    for key, why in [(None, "KEYSTILE_ENCRYPTION_KEY is not set"),
                     (secretbox.new_key(), "KEYSTILE_ENCRYPTION_KEY is another key")]:
        caplog.clear()
        settings = admin_settings(stores).model_copy(update={"encryption_key": key})
        async with another_admin(settings):
            async def said() -> bool:
                return any("cannot be opened" in r.getMessage() for r in caplog.records)
            await eventually(said)
        [line] = [r.getMessage() for r in caplog.records if "cannot be opened" in r.getMessage()]
        assert f"1 webhook endpoint(s) cannot be opened ({endpoint['id']})" in line
        assert why in line
        assert endpoint["secret"] not in caplog.text


async def test_deliveries_behind_an_earlier_one_wait_without_a_due_time(
        admin: Admin, org: dict[str, Any]) -> None:
    receiver = Receiver()  # down
    endpoint = await subscribe(admin, org["id"], receiver.url)
    key = await admin.key(org["id"])
    await admin.call("POST", f"/v1/keys/{key['id']}/pause", expect=200)
    await admin.call("POST", f"/v1/keys/{key['id']}/revoke", expect=200)
    rows = await admin.db.fetch(
        "SELECT next_attempt_at = 'infinity' AS waiting FROM webhook_deliveries ORDER BY seq")
    assert [r["waiting"] for r in rows] == [False, True, True]
    listed = (await admin.call(
        "GET", f"/v1/orgs/{org['id']}/webhooks/{endpoint['id']}/deliveries",
        expect=200))["data"]
    assert [d["event_type"] for d in listed] == ["key.revoked", "key.paused", "key.created"]
    assert [d["next_attempt_at"] is None for d in listed] == [True, True, False]


@pytest.mark.webhooks(concurrency=4, per_endpoint=2, timeout_s=30)
async def test_a_slow_endpoint_cannot_take_every_senders_slot(
        admin: Admin, org: dict[str, Any], receiver: Receiver) -> None:
    slow = Receiver()
    await slow.start()
    try:
        slow.gate.clear()  # holds every delivery
        await subscribe(admin, org["id"], slow.url, events=["key.created"])
        await subscribe(admin, org["id"], receiver.url, events=["key.created"])
        keys = [await admin.key(org["id"], name=f"k{i}") for i in range(6)]

        async def all_through() -> bool:  # the healthy endpoint gets every event
            return len(receiver.got) >= 6
        await eventually(all_through)
        assert slow.held == slow.peak == 2 and not slow.gate.is_set()
        slow.gate.set()

        async def slow_through() -> bool:
            return len(slow.got) >= 6
        await eventually(slow_through)
        assert slow.peak == 2
        assert sorted(e["key"]["id"] for e in slow.events()) == sorted(k["id"] for k in keys)
    finally:
        await slow.stop()
