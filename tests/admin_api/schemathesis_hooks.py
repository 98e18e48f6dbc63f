"""What the OpenAPI document says in words but JSON Schema cannot: ``metadata`` is at most
``MAX_METADATA_BYTES`` as compact JSON and nests at most ``MAX_METADATA_DEPTH`` levels. This
hook keeps schemathesis's generated bodies within that, as a client reading the document
would (loaded through ``SCHEMATHESIS_HOOKS`` by test_schemathesis.py).

And ids no generator can guess: the webhook routes get a real organisation and endpoint
(``KEYSTILE_SCHEMATHESIS_ORG_ID``, ``KEYSTILE_SCHEMATHESIS_WEBHOOK_ID``), so their bodies and
answers are checked, not only their 404s."""

from __future__ import annotations

import os
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


@schemathesis.hook
def map_path_parameters(ctx: Any, path_parameters: dict[str, Any] | None
                        ) -> dict[str, Any] | None:
    org_id = os.environ.get("KEYSTILE_SCHEMATHESIS_ORG_ID")
    webhook_id = os.environ.get("KEYSTILE_SCHEMATHESIS_WEBHOOK_ID")
    path = str(getattr(getattr(ctx, "operation", None), "path", ""))
    if not org_id or path_parameters is None or not path.startswith("/v1/orgs/{id}/webhooks"):
        return path_parameters
    mapped = {**path_parameters, "id": org_id}
    if webhook_id and "wid" in mapped:
        mapped["wid"] = webhook_id
    return mapped
