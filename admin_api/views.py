"""Records to response models, and models to JSON responses."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiohttp import web
from pydantic import BaseModel

from admin_api.models import KeyOut, OrgOut
from gateway.keyrecord import KeyRecord


def respond(model: BaseModel | None, status: int = 200) -> web.Response:
    if model is None:
        return web.Response(status=status)
    return web.Response(status=status, body=model.model_dump_json().encode(),
                        content_type="application/json")


def key_out(record: KeyRecord, now: datetime | None = None) -> KeyOut:
    values: dict[str, Any] = {name: getattr(record, name) for name in KeyOut.model_fields}
    values["status"] = record.effective_status(now or datetime.now(UTC))
    return KeyOut.model_validate(values)


def org_out(row: asyncpg.Record) -> OrgOut:
    return OrgOut.model_validate(dict(row))


def audit_view(model: BaseModel) -> dict[str, Any]:
    """What an audit row keeps of an object: its JSON form, timestamps left out."""
    data = model.model_dump(mode="json")
    for noise in ("created_at", "updated_at", "last_used_at"):
        data.pop(noise, None)
    return data
