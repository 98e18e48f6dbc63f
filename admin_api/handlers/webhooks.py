"""Webhook endpoints of an organisation: register, read, change, remove, roll the signing
secret, and look at (or re-send) their deliveries. The operator or the organisation's root
key; the secret is in the create and rotate responses only."""

from __future__ import annotations

from typing import Any, Literal

import asyncpg
from aiohttp import web
from yarl import URL

from admin_api import auth
from admin_api.auth import Principal
from admin_api.caps import MAX_WEBHOOKS
from admin_api.errors import REQUEST_ID, Conflict, NotFound, Unprocessable
from admin_api.inputs import decode_cursor, decode_int_cursor, encode_cursor, patch_fields
from admin_api.models import (
    Delivery,
    DeliveryList,
    DeliveryListQuery,
    WebhookCreate,
    WebhookCreated,
    WebhookList,
    WebhookListQuery,
    WebhookOut,
    WebhookRotate,
    WebhookRotated,
    WebhookUpdate,
)
from admin_api.repository import audit, orgs, webhooks
from admin_api.state import POOL, SENDER, SETTINGS
from admin_api.views import respond
from admin_api.webhooks import delivery, signing
from gateway.database import Connection, Queryable
from gateway.keyformat import new_id


def _org_id(request: web.Request, principal: Principal) -> str:
    org_id = auth.org_scope(principal, request.match_info["id"], in_path=True)
    assert org_id is not None  # the path names one
    return org_id


async def _org(conn: Queryable, org_id: str) -> None:
    if await orgs.get(conn, org_id) is None:
        raise NotFound("no organisation with that id", code="org_not_found")


async def _endpoint(conn: Queryable, request: web.Request, org_id: str,
                    lock: Literal["UPDATE", "NO KEY UPDATE"] | None = None) -> asyncpg.Record:
    await _org(conn, org_id)
    row = await webhooks.get(conn, org_id, request.match_info["wid"], lock)
    if row is None:
        raise NotFound("no webhook endpoint with that id in this organisation",
                       code="webhook_not_found")
    return row


def _out(row: asyncpg.Record) -> WebhookOut:
    return WebhookOut.model_validate(dict(row))


def _stored_secret(request: web.Request, endpoint_id: str) -> tuple[str, bytes, bool]:
    """A new secret, stored under the key the senders open secrets with."""
    secret = signing.new_secret()
    stored, sealed = signing.store(secret, endpoint_id, request.app[SENDER].box_key)
    return secret, stored, sealed


def _audited_url(url: str) -> str:
    """A URL as the audit log keeps it: without a query or user info, which may carry the
    receiver's own token (the endpoint itself still shows it whole)."""
    parsed = URL(url)
    kept = str(parsed.with_user(None).with_query(None).with_fragment(None))
    return kept + "?…" if parsed.raw_query_string else kept


async def _audit(conn: Connection, request: web.Request, principal: Principal, action: str,
                 org_id: str, endpoint_id: str, changes: dict[str, Any]) -> None:
    if "url" in changes:
        changes = {**changes, "url": _audited_url(changes["url"])}
    await audit.record(conn, principal.actor, action, target_type="webhook",
                       target_id=endpoint_id, org_id=org_id, changes=changes,
                       request_id=request[REQUEST_ID])


def _require_sendable(request: web.Request, url: str) -> None:
    """A URL whose host is refused whatever it resolves to (a literal private address, a
    numeric host that is not a plain IP address, ``localhost``) is refused now, not at every
    delivery; names are checked again when sending, against what they resolve to."""
    refused = delivery.refuse_host(URL(url).raw_host or "",
                                   request.app[SETTINGS].webhooks.allow_private_addresses)
    if refused:
        raise Unprocessable(f"url: {refused}", code="validation_failed")


async def create_webhook(request: web.Request, principal: Principal, body: WebhookCreate
                         ) -> web.Response:
    org_id = _org_id(request, principal)
    _require_sendable(request, body.url)
    values = {**body.model_dump(), "id": new_id("whk"), "org_id": org_id}
    secret, stored, sealed = _stored_secret(request, values["id"])
    async with request.app[POOL].acquire() as conn, conn.transaction():
        if await orgs.get(conn, org_id, lock="NO KEY UPDATE") is None:
            raise NotFound("no organisation with that id", code="org_not_found")
        if await webhooks.count(conn, org_id) >= MAX_WEBHOOKS:
            raise Conflict(f"an organisation has at most {MAX_WEBHOOKS} webhook endpoints; "
                           "remove one, or subscribe an existing one to more events",
                           code="too_many_webhooks")
        row = await webhooks.insert(conn, values, stored, sealed)
        await _audit(conn, request, principal, "webhook.create", org_id, values["id"],
                     body.model_dump())
    return respond(WebhookCreated(**_out(row).model_dump(), secret=secret), 201)


async def list_webhooks(request: web.Request, principal: Principal, query: WebhookListQuery
                        ) -> web.Response:
    org_id = _org_id(request, principal)
    pool = request.app[POOL]
    await _org(pool, org_id)
    rows = await webhooks.page(pool, org_id, decode_cursor(query.cursor), query.limit + 1)
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    return respond(WebhookList(data=[_out(r) for r in rows],
                               next_cursor=encode_cursor(rows[-1]["id"]) if more else None))


async def get_webhook(request: web.Request, principal: Principal) -> web.Response:
    return respond(_out(await _endpoint(request.app[POOL], request,
                                        _org_id(request, principal))))


async def update_webhook(request: web.Request, principal: Principal, body: WebhookUpdate
                         ) -> web.Response:
    org_id = _org_id(request, principal)
    fields = patch_fields(body)
    if "url" in fields:
        _require_sendable(request, fields["url"])
    async with request.app[POOL].acquire() as conn, conn.transaction():
        row = await _endpoint(conn, request, org_id, "NO KEY UPDATE")
        updated = await webhooks.update(conn, row["id"], fields)
        await _audit(conn, request, principal, "webhook.update", org_id, row["id"], fields)
    return respond(_out(updated))


async def delete_webhook(request: web.Request, principal: Principal) -> web.Response:
    org_id = _org_id(request, principal)
    async with request.app[POOL].acquire() as conn, conn.transaction():
        row = await _endpoint(conn, request, org_id, "UPDATE")
        await webhooks.delete(conn, row["id"])
        await _audit(conn, request, principal, "webhook.delete", org_id, row["id"], {})
    return respond(None, 204)


async def rotate_webhook(request: web.Request, principal: Principal, body: WebhookRotate
                         ) -> web.Response:
    org_id = _org_id(request, principal)
    async with request.app[POOL].acquire() as conn, conn.transaction():
        row = await _endpoint(conn, request, org_id, "NO KEY UPDATE")
        secret, stored, sealed = _stored_secret(request, row["id"])
        updated = await webhooks.roll_secret(conn, row["id"], stored, sealed,
                                             body.grace_seconds)
        await _audit(conn, request, principal, "webhook.rotate", org_id, row["id"],
                     {"grace_seconds": body.grace_seconds})
    return respond(WebhookRotated(**_out(updated).model_dump(), secret=secret))


def _delivery(row: asyncpg.Record) -> Delivery:
    values = dict(row)
    values.pop("seq")
    last = values["attempt_log"][-1] if values["attempt_log"] else {}
    values["last_status_code"] = last.get("status_code")
    values["last_latency_ms"] = last.get("latency_ms")
    values["last_error"] = last.get("error")
    return Delivery.model_validate(values)


async def list_deliveries(request: web.Request, principal: Principal,
                          query: DeliveryListQuery) -> web.Response:
    pool = request.app[POOL]
    endpoint = await _endpoint(pool, request, _org_id(request, principal))
    rows = await webhooks.deliveries(pool, endpoint["id"], query.state,
                                     decode_int_cursor(query.cursor), query.limit + 1)
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    return respond(DeliveryList(data=[_delivery(r) for r in rows],
                                next_cursor=encode_cursor(rows[-1]["seq"]) if more else None))


async def retry_delivery(request: web.Request, principal: Principal) -> web.Response:
    org_id = _org_id(request, principal)
    pool = request.app[POOL]
    endpoint = await _endpoint(pool, request, org_id)
    delivery_id = request.match_info["did"]
    if await webhooks.delivery(pool, endpoint["id"], delivery_id) is None:
        raise NotFound("no delivery with that id for this endpoint", code="delivery_not_found")
    try:
        await request.app[SENDER].resend(delivery_id)
    except signing.SecretUnavailable as exc:
        raise Conflict(str(exc), code="encryption_key_missing") from None
    except delivery.Busy as exc:
        raise Conflict(str(exc), code=exc.code) from None
    async with pool.acquire() as conn, conn.transaction():
        await _audit(conn, request, principal, "webhook.retry", org_id, endpoint["id"],
                     {"delivery_id": delivery_id})
    row = await webhooks.delivery(pool, endpoint["id"], delivery_id)
    if row is None:  # the endpoint was removed meanwhile
        raise NotFound("no delivery with that id for this endpoint", code="delivery_not_found")
    return respond(_delivery(row))
