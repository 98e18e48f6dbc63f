"""What the OpenAPI document says in words but JSON Schema cannot: ``metadata`` is at most
``MAX_METADATA_BYTES`` as compact JSON and nests at most ``MAX_METADATA_DEPTH`` levels. This
hook keeps schemathesis's generated bodies within that, as a client reading the document
would (loaded through ``SCHEMATHESIS_HOOKS`` by test_schemathesis.py)."""

from __future__ import annotations

from typing import Any

import orjson
import schemathesis

from admin_api.caps import MAX_METADATA_BYTES, MAX_METADATA_DEPTH


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


@schemathesis.hook
def filter_body(ctx: Any, body: Any) -> bool:
    metadata = body.get("metadata") if isinstance(body, dict) else None
    if not isinstance(metadata, dict):
        return True
    try:
        size = len(orjson.dumps(metadata))
    except (TypeError, orjson.JSONEncodeError):
        return True  # not JSON this API can read anyway: the negative checks want it
    return size <= MAX_METADATA_BYTES and _depth(metadata) <= MAX_METADATA_DEPTH
