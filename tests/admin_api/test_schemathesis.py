"""The OpenAPI document says exactly what the admin API accepts and answers: a bounded
schemathesis run (every check, fixed seed) against the app on a random port, with 0 failures.
Organisation routes run with the operator token, the rest with a root key (the operator has
no key of its own, and must name org_id, which a schema cannot make depend on the caller).
The metadata caps JSON Schema cannot state (size, depth) reach schemathesis through a hook
(schemathesis_hooks.py)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from tests.admin_api.conftest import OPERATOR_TOKEN, Admin

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
ROOT = Path(__file__).parents[2]
MAX_EXAMPLES = 15  # per operation and phase: about a minute in all on a busy 2-core machine
RUN_TIMEOUT_S = 240


async def _run(base: str, tmp_path: Path, header: str, *filters: str,
               env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS), "run", f"{base}/openapi.json", "--checks", "all", "--seed", "1",
        "--max-examples", str(MAX_EXAMPLES), "--workers", "1", "--no-color",
        "--generation-database", "none", "--generation-allow-x00", "false",
        "--header", header, *filters,
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.admin_api.schemathesis_hooks",
             "PYTHONPATH": str(ROOT), **(env or {})})
    out, _ = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT_S)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def test_schema_and_behaviour_agree(admin: Admin, root: dict[str, Any],
                                          tmp_path: Path) -> None:
    base = str(admin.client.make_url("")).rstrip("/")
    code, out = await _run(base, tmp_path, f"Authorization: Bearer {OPERATOR_TOKEN}",
                           "--include-tag", "organisations", "--exclude-path-regex", "owners")
    assert code == 0, out[-20000:]
    # The run above may delete organisations (the root key's with them): the rest runs with
    # a root key of an organisation made now, the webhook routes against it and a real
    # endpoint of it.
    fresh = await admin.org("schemathesis")
    root = await admin.key(fresh["id"], root=True, name="root", scopes=["*"], owner_id="ops")
    endpoint = await admin.call("POST", f"/v1/orgs/{fresh['id']}/webhooks",
                                json={"url": "https://hooks.example.com/k"}, expect=201)
    code, out = await _run(base, tmp_path, f"X-API-Key: {root['key']}",
                           "--exclude-path-regex", "^/v1/orgs$|^/v1/orgs/\\{id\\}$|^/metrics$",
                           env={"KEYSTILE_SCHEMATHESIS_ORG_ID": fresh["id"],
                                "KEYSTILE_SCHEMATHESIS_WEBHOOK_ID": endpoint["id"]})
    assert code == 0, out[-20000:]


async def test_findings_pinned(admin: Admin, org: dict[str, Any]) -> None:
    """What schemathesis found, one by one."""
    resp = await admin.client.request("PUT", "/v1/keys/self")
    assert resp.status == 405 and resp.headers["Allow"] == "GET"
    key = await admin.key(org["id"], usage_limit=319.0, rate_limits=[{"limit": 5.0,
                                                                      "window_s": 1}])
    assert key["usage_limit"] == 319 and key["rate_limits"] == [{"limit": 5, "window_s": 1}]
    await admin.call("POST", "/v1/keys", json={"org_id": org["id"], "usage_limit": 319.5},
                     expect=422)
    await admin.call("PATCH", f"/v1/keys/{key['id']}", json={"name": None}, expect=422)
    await admin.call("GET", "/v1/keys?cursor=", expect=422)
    schema = await admin.call("GET", "/openapi.json", expect=200)
    update = schema["components"]["schemas"]["KeyUpdate"]
    assert update["minProperties"] == 1 and update["properties"]["name"]["type"] == "string"
    assert schema["paths"]["/v1/keys/self"]["get"]["security"] == [{"rootKey": []}]
    assert "503" in schema["paths"]["/v1/keys"]["post"]["responses"]
    assert "413" in schema["paths"]["/v1/keys"]["post"]["responses"]
