from __future__ import annotations

from typing import Any

from gateway import keyformat
from tests.admin_api.conftest import Admin

TOTAL = 3000


async def test_keyset_pagination_walks_thousands_of_keys_exactly_once(
        admin: Admin, org: dict[str, Any]) -> None:
    other = await admin.org("other")
    rows = []
    for i in range(TOTAL):
        raw = keyformat.generate("ks_live")
        rows.append((keyformat.new_id("key"), org["id"] if i % 10 else other["id"],
                     f"owner-{i % 7}", keyformat.display_prefix(raw)))
    await admin.db.executemany(
        "INSERT INTO keys (id, org_id, owner_id, prefix, key_prefix) VALUES ($1, $2, $3, $4, "
        "'ks_live')", rows)
    expected = [r[0] for r in rows if r[1] == org["id"]]

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        query = f"/v1/keys?org_id={org['id']}&limit=1000" + (f"&cursor={cursor}" if cursor
                                                               else "")
        page = await admin.call("GET", query, expect=200)
        pages += 1
        seen += [k["id"] for k in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == expected and pages == 3  # 2700 keys: 1000 + 1000 + 700

    # A filter combined with pagination stays consistent too.
    owner = [r[0] for r in rows if r[1] == org["id"] and r[2] == "owner-3"]
    seen, cursor = [], None
    while True:
        query = f"/v1/keys?org_id={org['id']}&owner_id=owner-3&limit=100" + (
            f"&cursor={cursor}" if cursor else "")
        page = await admin.call("GET", query, expect=200)
        seen += [k["id"] for k in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == owner


async def test_limit_bounds(admin: Admin) -> None:
    for bad in ("0", "1001", "ten"):
        body = await admin.call("GET", f"/v1/keys?limit={bad}", expect=422)
        assert body["error"]["fields"][0]["field"] == "limit"
    body = await admin.call("GET", "/v1/keys?colour=red", expect=422)
    assert body["error"]["fields"][0]["field"] == "colour"
