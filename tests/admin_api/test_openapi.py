from __future__ import annotations

from admin_api.routes import ROUTES
from tests.admin_api.conftest import Admin


async def test_openapi_document_covers_every_route_and_uses_request_models(admin: Admin
                                                                           ) -> None:
    resp = await admin.client.get("/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["openapi"].startswith("3.1")
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    assert documented == {(r.method, r.path) for r in ROUTES}

    create = doc["paths"]["/v1/keys"]["post"]
    ref = create["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert {"org_id", "scopes", "expires_at", "quota", "rate_limits"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False
    assert "201" in create["responses"] and "422" in create["responses"]
    listing = doc["paths"]["/v1/keys"]["get"]
    params = {p["name"] for p in listing["parameters"]}
    assert {"owner_id", "status", "environment", "root", "limit", "cursor"} <= params
    assert doc["paths"]["/healthz"]["get"]["security"] == []
    for ref_holder in str(doc).split("'$ref': '")[1:]:
        name = ref_holder.split("'")[0].rsplit("/", 1)[1]
        assert name in doc["components"]["schemas"], name
