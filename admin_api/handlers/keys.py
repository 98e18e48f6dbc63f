"""Keys: create, list, read, update, delete, rotate, status changes and default switching."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from admin_api import auth
from admin_api.auth import Principal
from admin_api.changes import Changes
from admin_api.errors import REQUEST_ID, Conflict, Forbidden, NotFound, Unprocessable
from admin_api.inputs import decode_int_cursor, encode_cursor, patch_fields
from admin_api.models import (
    KeyCreate,
    KeyCreated,
    KeyList,
    KeyListQuery,
    KeyOut,
    KeyRotated,
    KeyUpdate,
    RotateRequest,
    StoredKeyDefaults,
)
from admin_api.repository import audit, keys, orgs
from admin_api.state import POOL, REDIS, SETTINGS
from admin_api.views import audit_view, key_out, respond
from admin_api.webhooks import expiry
from gateway import events, keyformat, thresholds
from gateway.database import Connection
from gateway.keyrecord import KeyRecord
from gateway.limits.exact import stale_counts
from gateway.secretbox import parse_key, seal

NOT_NULLABLE = ("name", "scopes", "rate_limits", "metadata")
STATUS_EVENTS = {"revoked": events.KEY_REVOKED, "paused": events.KEY_PAUSED}


async def _record(conn: Connection, request: web.Request, principal: Principal,
                  action: str, key: KeyRecord, changes: dict[str, Any]) -> None:
    await audit.record(conn, principal.actor, action, target_type="key", target_id=key.id,
                       org_id=key.org_id, changes=changes, request_id=request[REQUEST_ID])


async def _announce(conn: Connection, principal: Principal, type_: str, key: KeyRecord,
                    data: dict[str, Any]) -> None:
    """The webhook event of a key change, in the change's transaction."""
    actor = principal.actor
    await events.record(conn, type_, key.org_id, events.key_view(key),
                        {**data, "actor": {"type": actor.type, "id": actor.id}})


async def _unset_previous_default(conn: Connection, request: web.Request, principal: Principal,
                                  org_id: str, owner_id: str, new_default: str,
                                  changes: Changes) -> None:
    """Unsets the owner's current default (the caller holds ``lock_owner``)."""
    previous = await keys.current_default(conn, org_id, owner_id)
    if previous is None or previous.id == new_default:
        return
    if principal.key is not None and previous.root and previous.id != principal.key.id:
        raise Forbidden("the owner's current default is another root key, which a root key "
                        "cannot change; use the operator token", code="root_key_protected")
    await changes.key(conn, previous.id)
    await keys.set_default(conn, previous.id, False)
    await _record(conn, request, principal, "key.unset_default", previous,
                  {"is_default": False, "replaced_by": new_default})


async def locked(conn: Connection, principal: Principal, key_id: str) -> KeyRecord:
    """The key, row-locked for this transaction, after checking the caller may change it."""
    key = auth.visible(principal, await keys.get(conn, key_id, for_update=True), key_id)
    auth.require_modify(principal, key)
    return key


async def create_key(request: web.Request, principal: Principal, body: KeyCreate
                     ) -> web.Response:
    return respond(await create(request, principal, body), 201)


def _new_secret(key_prefix: str) -> str:
    if key_prefix == keyformat.CUSTOMER_KEY_PREFIX:
        return keyformat.generate_customer_key()
    return keyformat.generate(key_prefix)


def _box_key(request: web.Request) -> bytes:
    text = request.app[SETTINGS].encryption_key
    if text is None:
        raise Conflict("recoverable keys need an encryption key: set KEYSTILE_ENCRYPTION_KEY",
                       code="encryption_key_missing")
    return parse_key(text)


async def create(request: web.Request, principal: Principal, body: KeyCreate,
                 customer_style: bool = False, one_per_owner: bool = False) -> KeyCreated:
    """Issues a key; the one place a raw key is made (dialects call this too).
    ``one_per_owner``: refuse (409 ``owner_has_key``) when the owner already has a key,
    checked under the owner's lock so concurrent creations cannot both pass.
    ``customer_style``: Open Dental's 16 upper-case alphanumerics instead of the canonical
    format."""
    org_id = auth.org_scope(principal, body.org_id)
    if org_id is None:
        raise Unprocessable("org_id: required when creating a key with the operator token",
                            code="validation_failed")
    if body.root and principal.key is not None:
        raise Forbidden("only the operator token may create root keys", code="operator_required")
    now = datetime.now(UTC)
    if body.expires_at is not None and body.expires_at <= now:
        raise Unprocessable("expires_at: must be in the future", code="validation_failed")
    if body.is_default and body.owner_id is None:
        raise Unprocessable("is_default: a default key needs an owner_id",
                            code="validation_failed")
    changes = Changes()
    async with request.app[POOL].acquire() as conn, conn.transaction():
        # KEY SHARE: the organisation cannot be deleted under a key being created in it.
        org = await orgs.get(conn, org_id, lock="KEY SHARE")
        if org is None:
            raise NotFound("no organisation with that id", code="org_not_found")
        defaults = StoredKeyDefaults.model_validate(org["key_defaults"])
        if body.root:
            # The organisation's default limits are for the keys it hands out, not for the
            # keys that administer it: a root key gets only the limits its request sets.
            defaults = defaults.model_copy(update={"usage_limit": None, "quota": None,
                                                   "rate_limits": [], "expires_in_s": None})
        scopes = body.scopes if body.scopes is not None else defaults.scopes
        auth.require_grantable(principal, scopes)
        expires_at = body.expires_at
        if expires_at is None and defaults.expires_in_s:
            expires_at = now + timedelta(seconds=defaults.expires_in_s)
        quota = body.quota or defaults.quota
        rate_limits = body.rate_limits if body.rate_limits is not None else defaults.rate_limits
        key_prefix = (keyformat.CUSTOMER_KEY_PREFIX if customer_style
                      else body.prefix or org["key_prefix"])
        raw = _new_secret(key_prefix)
        key_id = keyformat.new_id("key")
        values = {
            "id": key_id,
            "org_id": org_id,
            "owner_id": body.owner_id,
            "name": body.name,
            "environment": body.environment or defaults.environment,
            "root": body.root,
            "parent_id": principal.key.id if principal.key else None,
            "scopes": list(dict.fromkeys(scopes)),
            "expires_at": expires_at,
            "usage_limit": body.usage_limit if "usage_limit" in body.model_fields_set
            else defaults.usage_limit,
            "quota": quota.model_dump() if quota else None,
            "rate_limits": [r.model_dump() for r in rate_limits],
            "metadata": body.metadata,
            "prefix": keyformat.display_prefix(raw),
            "key_prefix": key_prefix,
            "secret_ciphertext": seal(_box_key(request), key_id, raw) if body.recoverable
            else None,
        }
        if body.owner_id is not None and (one_per_owner or body.is_default):
            await keys.lock_owner(conn, org_id, body.owner_id)
        if one_per_owner and await conn.fetchval(
                "SELECT 1 FROM keys WHERE org_id = $1 AND owner_id = $2 LIMIT 1",
                org_id, body.owner_id):
            raise Conflict("this owner already has a key", code="owner_has_key")
        if body.is_default and body.owner_id is not None:
            await _unset_previous_default(conn, request, principal, org_id, body.owner_id,
                                          key_id, changes)
        record = await keys.insert(conn, values, keyformat.hash_key(raw))
        if body.is_default:
            record = await keys.set_default(conn, record.id, True)
        # Announced too: a worker that called the new secret unknown (its negative cache)
        # forgets that, and one reading a replica waits until the replica has the key.
        await changes.key(conn, record.id)
        out = key_out(record, now)
        await _record(conn, request, principal, "key.create", record, audit_view(out))
        await _announce(conn, principal, events.KEY_CREATED, record, {
            "expires_at": expires_at.isoformat() if expires_at else None})
    await changes.announce(request.app[POOL], request.app[REDIS])
    return KeyCreated(**out.model_dump(), key=raw)


async def list_keys(request: web.Request, principal: Principal, query: KeyListQuery
                    ) -> web.Response:
    return respond(await page(request, principal, query))


async def page(request: web.Request, principal: Principal, query: KeyListQuery) -> KeyList:
    org_id = auth.org_scope(principal, query.org_id)
    records = await keys.page(
        request.app[POOL], org_id=org_id, owner_id=query.owner_id, status=query.status,
        environment=query.environment, root=query.root, search=query.search,
        after=decode_int_cursor(query.cursor), limit=query.limit + 1)
    more = len(records) > query.limit
    records = records[: query.limit]
    now = datetime.now(UTC)
    return KeyList(data=[key_out(r, now) for r in records],
                   next_cursor=encode_cursor(records[-1].serial) if more else None)


async def every(request: web.Request, principal: Principal, **filters: Any
                ) -> AsyncIterator[KeyOut]:
    """Every key ``page`` would list, across all pages (dialects list without cursors)."""
    cursor = None
    while True:
        found = await page(request, principal, KeyListQuery(limit=1000, cursor=cursor,
                                                            **filters))
        for key in found.data:
            yield key
        if found.next_cursor is None:
            return
        cursor = found.next_cursor


async def get_self(request: web.Request, principal: Principal) -> web.Response:
    return respond(key_out(principal.own_key()))


async def get_key(request: web.Request, principal: Principal) -> web.Response:
    return respond(await read(request, principal, request.match_info["id"]))


async def read(request: web.Request, principal: Principal, key_id: str) -> KeyOut:
    return key_out(auth.visible(principal, await keys.get(request.app[POOL], key_id), key_id))


async def update_key(request: web.Request, principal: Principal, body: KeyUpdate
                     ) -> web.Response:
    return respond(await update(request, principal, request.match_info["id"], body))


async def update(request: web.Request, principal: Principal, key_id: str, body: KeyUpdate
                 ) -> KeyOut:
    fields = patch_fields(body, NOT_NULLABLE)
    audited = dict(fields)
    if body.expires_at is not None:
        fields["expires_at"] = body.expires_at  # the column wants a datetime, not a string
    changes = Changes()
    async with request.app[POOL].acquire() as conn, conn.transaction():
        key = await locked(conn, principal, key_id)
        auth.require_shadow_allowed(principal, fields)
        auth.require_not_own_limits(principal, key, fields)
        if "scopes" in fields:
            auth.require_grantable(principal, fields["scopes"])
            fields["scopes"] = list(dict.fromkeys(fields["scopes"]))
        if key.is_default and fields.get("owner_id", key.owner_id) != key.owner_id:
            fields["is_default"] = audited["is_default"] = False  # a default is its owner's
        updated = await keys.update(conn, key.id, fields)
        limits = "usage_limit" in fields or "quota" in fields
        stale = stale_counts(key) if limits else []
        await thresholds.limits_changed(conn, key.id,
                                        usage=updated.usage_limit != key.usage_limit,
                                        quota=updated.quota != key.quota)
        if "expires_at" in fields and (key.expires_at is None
                                       or key.expires_at > datetime.now(UTC)):
            await expiry.expired_by_change(conn, key.id)
        await changes.key(conn, key.id, stale)
        await _record(conn, request, principal, "key.update", key, audited)
    await changes.announce(request.app[POOL], request.app[REDIS])
    return key_out(updated)


async def delete_key(request: web.Request, principal: Principal) -> web.Response:
    await delete(request, principal, request.match_info["id"])
    return respond(None, 204)


async def delete(request: web.Request, principal: Principal, key_id: str) -> None:
    changes = Changes()
    async with request.app[POOL].acquire() as conn, conn.transaction():
        key = await locked(conn, principal, key_id)
        await changes.key(conn, key.id, stale_counts(key))
        await keys.delete(conn, key.id)
        await _record(conn, request, principal, "key.delete", key, {})
    await changes.announce(request.app[POOL], request.app[REDIS])


async def rotate_key(request: web.Request, principal: Principal, body: RotateRequest
                     ) -> web.Response:
    return respond(await rotate(request, principal, request.match_info["id"],
                                body.grace_seconds))


async def rotate(request: web.Request, principal: Principal, key_id: str, grace_seconds: int
                 ) -> KeyRotated:
    changes = Changes()
    async with request.app[POOL].acquire() as conn, conn.transaction():
        key = await locked(conn, principal, key_id)
        if key.status == "revoked":
            raise Conflict("a revoked key cannot be rotated; create a new key",
                           code="key_revoked")
        await changes.key(conn, key.id)
        raw = _new_secret(key.key_prefix)
        if key.recoverable:
            await keys.set_sealed_secret(conn, key.id, seal(_box_key(request), key.id, raw))
        ends = await keys.rotate(conn, key.id, keyformat.hash_key(raw),
                                 keyformat.display_prefix(raw),
                                 timedelta(seconds=grace_seconds))
        updated = await keys.get(conn, key.id)
        assert updated is not None
        rotation = {"grace_seconds": grace_seconds,
                    "previous_expires_at": ends.isoformat() if ends else None}
        await _record(conn, request, principal, "key.rotate", key, rotation)
        await _announce(conn, principal, events.KEY_ROTATED, updated, rotation)
    await changes.announce(request.app[POOL], request.app[REDIS])
    out = key_out(updated)
    return KeyRotated(**out.model_dump(), key=raw, previous_expires_at=ends)


async def set_status(request: web.Request, principal: Principal, key_id: str, action: str,
                     target: str) -> KeyOut:
    """revoke / pause / resume: idempotent on a key already in the target state."""
    changes = Changes()
    async with request.app[POOL].acquire() as conn, conn.transaction():
        key = await locked(conn, principal, key_id)
        if key.status == target:
            return key_out(key)
        if key.status == "revoked":
            raise Conflict(f"key {key.id} is revoked, which is irreversible; "
                           "create a new key", code="key_revoked")
        await changes.key(conn, key.id)
        updated = await keys.set_status(conn, key.id, target)
        await _record(conn, request, principal, action, key, {"status": [key.status, target]})
        if target in STATUS_EVENTS:
            await _announce(conn, principal, STATUS_EVENTS[target], updated,
                            {"previous_status": key.status})
    await changes.announce(request.app[POOL], request.app[REDIS])
    return key_out(updated)


def _status_change(action: str, target: str) -> Callable[..., Awaitable[web.Response]]:
    async def change(request: web.Request, principal: Principal) -> web.Response:
        return respond(await set_status(request, principal, request.match_info["id"], action,
                                        target))

    change.__name__ = action.replace(".", "_")
    return change


revoke_key = _status_change("key.revoke", "revoked")
pause_key = _status_change("key.pause", "paused")
resume_key = _status_change("key.resume", "active")


async def change_default(request: web.Request, principal: Principal, key_id: str, on: bool
                         ) -> KeyOut:
    """Make (or unmake) the owner's default key; the previous default is unset in the same
    transaction, under the owner's lock (taken before any row lock)."""
    changes = Changes()
    async with request.app[POOL].acquire() as conn, conn.transaction():
        seen = auth.visible(principal, await keys.get(conn, key_id), key_id)
        if seen.owner_id is None:
            if not on:
                return key_out(seen)
            raise Conflict("the key has no owner_id; set one with PATCH first",
                           code="key_has_no_owner")
        await keys.lock_owner(conn, seen.org_id, seen.owner_id)
        key = await locked(conn, principal, key_id)
        if key.owner_id != seen.owner_id:
            raise Conflict("the key's owner changed meanwhile; retry", code="concurrent_update")
        if key.is_default == on:
            return key_out(key)
        if on and key.status == "revoked":
            raise Conflict("a revoked key cannot be a default", code="key_revoked")
        if on:
            await _unset_previous_default(conn, request, principal, key.org_id,
                                          seen.owner_id, key.id, changes)
        await changes.key(conn, key.id)
        updated = await keys.set_default(conn, key.id, on)
        await _record(conn, request, principal,
                      "key.set_default" if on else "key.unset_default", key, {"is_default": on})
    await changes.announce(request.app[POOL], request.app[REDIS])
    return key_out(updated)


async def set_default(request: web.Request, principal: Principal) -> web.Response:
    return respond(await change_default(request, principal, request.match_info["id"], True))


async def unset_default(request: web.Request, principal: Principal) -> web.Response:
    return respond(await change_default(request, principal, request.match_info["id"], False))
