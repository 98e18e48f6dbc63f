"""The OpenAPI 3.1 document, generated from the route table and its pydantic models."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from admin_api.caps import MAX_ID_LEN
from admin_api.models import ErrorBody

if TYPE_CHECKING:
    from admin_api.routes import Route

REF = "#/components/schemas/{model}"
_PARAM_RE = re.compile(r"{(\w+)}")

_ERRORS = {
    "400": "Malformed request",
    "401": "Missing or invalid credentials",
    "403": "Not allowed",
    "404": "Not found",
    "409": "Conflict with the current state",
    "413": "The request body is over request_body_limit",
    "422": "Invalid values; the message names the field",
    "503": "A store is unavailable",
}
# Path parameters with a bound of their own (the rest are ids: unknown ones are 404).
_PATH_SCHEMAS = {"owner_id": {"type": "string", "minLength": 1, "maxLength": MAX_ID_LEN}}


def _query_parameters(model: type[BaseModel], schemas: dict[str, Any]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF)
    schemas.update(schema.pop("$defs", {}))
    required = set(schema.get("required", []))
    return [{"name": name, "in": "query", "required": name in required, "schema": prop}
            for name, prop in schema.get("properties", {}).items()]


def build(routes: Iterable[Route], version: str) -> dict[str, Any]:
    models: set[type[BaseModel]] = {ErrorBody}
    for route in routes:
        models.update(x for x in (route.body, route.response) if x is not None)
    _, defs = models_json_schema([(model, "validation") for model in sorted(
        models, key=lambda x: x.__name__)], ref_template=REF)
    schemas: dict[str, Any] = defs.get("$defs", {})
    error_ref = {"$ref": REF.format(model="ErrorBody")}
    paths: dict[str, Any] = {}
    for route in routes:
        op: dict[str, Any] = {
            "summary": route.summary,
            "operationId": route.handler.__name__,
            "tags": [route.tag],
            "parameters": [{"name": n, "in": "path", "required": True,
                            "schema": _PATH_SCHEMAS.get(n, {"type": "string"})}
                           for n in _PARAM_RE.findall(route.path)],
            "responses": {},
        }
        if route.query is not None:
            op["parameters"] += _query_parameters(route.query, schemas)
        if route.body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": REF.format(model=route.body.__name__)}}}}
        ok: dict[str, Any] = {"description": "Success"}
        if route.response is not None:
            ok["content"] = {"application/json": {
                "schema": {"$ref": REF.format(model=route.response.__name__)}}}
        op["responses"][str(route.status)] = ok
        if route.public:
            op["security"] = []
        elif route.access == "key":
            op["security"] = [{"rootKey": []}]
        for status, text in ({} if route.public else _ERRORS).items():
            if status == "413" and route.body is None:
                continue
            op["responses"][status] = {"description": text, "content": {
                "application/json": {"schema": error_ref}}}
        if route.public and route.response is not None and route.path == "/readyz":
            op["responses"]["503"] = {**ok, "description": "A store does not answer"}
        paths.setdefault(route.path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Keystile admin API", "version": version},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "operator": {"type": "http", "scheme": "bearer",
                             "description": "the operator token"},
                "rootKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                            "description": "a root key of the organisation (sub keys read "
                                           "only themselves)"},
            },
        },
        "security": [{"operator": []}, {"rootKey": []}],
    }
