"""Key events reach a real receiver once each, signed, in the order they happened."""

from __future__ import annotations

import time
from typing import Any

from admin_api.webhooks import signing
from tests.admin_api.conftest import OPERATOR, Admin
from tests.gateway.conftest import eventually
from tests.webhooks.conftest import Receiver, subscribe


async def test_each_key_event_arrives_once_with_a_valid_signature(
        admin: Admin, org: dict[str, Any], receiver: Receiver) -> None:
    endpoint = await subscribe(admin, org["id"], receiver.url)
    key = await admin.key(org["id"], name="billing", owner_id="clinic-7")
    key_id = key["id"]
    rotated = await admin.call("POST", f"/v1/keys/{key_id}/rotate", json={"grace_seconds": 0},
                               expect=200)
    await admin.call("POST", f"/v1/keys/{key_id}/pause", expect=200)
    await admin.call("POST", f"/v1/keys/{key_id}/pause", expect=200)  # already paused: no event
    await admin.call("POST", f"/v1/keys/{key_id}/revoke", expect=200)

    async def four() -> bool:
        return len(receiver.got) >= 4
    await eventually(four)
    types = [e["type"] for e in receiver.events()]
    assert types == ["key.created", "key.rotated", "key.paused", "key.revoked"]
    for got in receiver.got:
        header = got.headers[signing.HEADER]
        assert signing.verify(header, got.body, endpoint["secret"], int(time.time()))
        assert not signing.verify(header, got.body + b" ", endpoint["secret"], int(time.time()))
        event = got.event
        assert event["org_id"] == org["id"]
        assert event["key"]["id"] == key_id
        assert event["key"]["owner_id"] == "clinic-7"
        assert event["key"]["name"] == "billing"
        assert got.headers["Keystile-Event-Id"] == event["id"]
        assert got.headers["Keystile-Event-Type"] == event["type"]
        assert key["key"].encode() not in got.body and rotated["key"].encode() not in got.body
    assert receiver.events()[0]["key"]["prefix"] == key["prefix"]
    assert receiver.events()[1]["key"]["prefix"] == rotated["prefix"]
    assert receiver.events()[3]["data"]["previous_status"] == "paused"
    assert len({e["id"] for e in receiver.events()}) == 4

    async def recorded() -> bool:  # the last answer reaches the sender after the receiver
        rows = await admin.db.fetch("SELECT state, attempts FROM webhook_deliveries")
        return [(r["state"], r["attempts"]) for r in rows] == [("delivered", 1)] * 4
    await eventually(recorded)


async def test_a_rolled_secret_signs_beside_the_new_one_until_its_grace_ends(
        admin: Admin, org: dict[str, Any], receiver: Receiver) -> None:
    endpoint = await subscribe(admin, org["id"], receiver.url)
    rolled = await admin.call("POST", f"/v1/orgs/{org['id']}/webhooks/{endpoint['id']}/rotate",
                              json={"grace_seconds": 3600}, expect=200)
    old, new = endpoint["secret"], rolled["secret"]
    assert old != new and rolled["previous_secret_expires_at"] is not None
    await admin.key(org["id"], name="during")

    async def one() -> bool:
        return len(receiver.got) >= 1
    await eventually(one)
    got = receiver.got[0]
    header = got.headers[signing.HEADER]
    assert header.count("v1=") == 2
    now = int(time.time())
    assert signing.verify(header, got.body, old, now) and signing.verify(header, got.body, new,
                                                                         now)
    # Rolled again without grace: only the newest signs.
    newest = (await admin.call("POST",
                               f"/v1/orgs/{org['id']}/webhooks/{endpoint['id']}/rotate",
                               json={"grace_seconds": 0}, expect=200))["secret"]
    await admin.key(org["id"], name="after")

    async def two() -> bool:
        return len(receiver.got) >= 2
    await eventually(two)
    header = receiver.got[1].headers[signing.HEADER]
    assert header.count("v1=") == 1
    assert signing.verify(header, receiver.got[1].body, newest, now)
    assert not signing.verify(header, receiver.got[1].body, new, now)
    metrics = await admin.client.get("/metrics", headers=OPERATOR)
    assert 'keystile_webhook_attempts_total{outcome="delivered"}' in await metrics.text()
