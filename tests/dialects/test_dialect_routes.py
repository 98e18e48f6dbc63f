from __future__ import annotations

import re

from admin_api import console, session
from admin_api.routes import ROUTES
from tests.admin_api.conftest import Admin


async def test_every_dialect_route_requires_credentials(dialect_admin: Admin) -> None:
    canonical = {(r.method, r.path) for r in ROUTES} | {
        (method, path) for method, path, _ in console.ROUTES} | {("GET", "/console/static")} | {
        (r.method, session.API + r.path) for r in ROUTES}
    dialect_routes = {(r.method, r.resource.canonical)
                      for r in dialect_admin.client.app.router.routes()
                      if r.method != "HEAD" and r.resource is not None} - canonical
    assert len(dialect_routes) == 29  # scrubs 4, scrubbe 5, nuxera 11, opendental 3, regen 6
    for method, path in sorted(dialect_routes):
        resp = await dialect_admin.client.request(method, re.sub(r"\{\w+\}", "x", path),
                                                  json={})
        assert resp.status == 401, (method, path, resp.status)
