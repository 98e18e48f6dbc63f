"""The admin API's route table, written once as data: the router, the authentication
requirement, the request validation and the OpenAPI document are all built from it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

from aiohttp import web
from pydantic import BaseModel

from admin_api import inputs, session
from admin_api import models as m
from admin_api.auth import PRINCIPAL, authenticate, require_manager, require_operator
from admin_api.handlers import audit, keys, meta, orgs, owners, usage, verify, webhooks
from admin_api.state import POOL, SETTINGS

HandlerFn = Callable[..., Awaitable[web.StreamResponse]]
Access = Literal["public", "any", "key", "manager", "operator"]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: HandlerFn
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    # public | any (any credential) | key (any key, not the operator) | manager (operator or
    # root key) | operator
    access: Access = "manager"

    def __post_init__(self) -> None:
        if self.access not in get_args(Access):
            raise ValueError(f"route {self.path}: unknown access {self.access!r}")

    @property
    def public(self) -> bool:
        return self.access == "public"

    def endpoint(self) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """Authenticate (unless public), validate query and body, then call the handler."""

        async def handle(request: web.Request) -> web.StreamResponse:
            kwargs: dict[str, Any] = {}
            if not self.public:
                principal = await authenticate(request, request.app[POOL],
                                               request.app[SETTINGS].admin.token)
                request[PRINCIPAL] = principal
                kwargs["principal"] = principal
                # Who may call is settled before the input is looked at.
                if self.access == "operator":
                    require_operator(principal)
                elif self.access == "manager":
                    require_manager(principal)
            if self.query is not None:
                kwargs["query"] = inputs.query(request, self.query)
            if self.body is not None:
                kwargs["body"] = await inputs.body(request, self.body)
            return await self.handler(request, **kwargs)

        handle.__name__ = self.handler.__name__
        return handle


ROUTES: tuple[Route, ...] = (
    Route("GET", "/healthz", meta.healthz, "The process is up", "operations",
          response=m.Health, access="public"),
    Route("GET", "/readyz", meta.readyz, "PostgreSQL and Redis answer", "operations",
          response=m.Health, access="public"),
    Route("GET", "/openapi.json", meta.openapi, "This document", "operations", access="public"),
    Route("GET", "/metrics", meta.metrics, "Prometheus metrics of this process",
          "operations", access="operator"),
    Route("POST", "/v1/orgs", orgs.create_org, "Create an organisation", "organisations",
          body=m.OrgCreate, response=m.OrgOut, status=201, access="operator"),
    Route("GET", "/v1/orgs", orgs.list_orgs, "List organisations", "organisations",
          query=m.OrgListQuery, response=m.OrgList, access="operator"),
    Route("GET", "/v1/orgs/{id}", orgs.get_org, "Read an organisation", "organisations",
          response=m.OrgOut, access="operator"),
    Route("PATCH", "/v1/orgs/{id}", orgs.update_org, "Update an organisation", "organisations",
          body=m.OrgUpdate, response=m.OrgOut, access="operator"),
    Route("DELETE", "/v1/orgs/{id}", orgs.delete_org, "Delete an organisation",
          "organisations", query=m.OrgDeleteQuery, status=204, access="operator"),
    Route("GET", "/v1/orgs/{id}/owners/{owner_id}/limits", owners.get_owner_limits,
          "Rate limits shared by an owner's keys", "organisations",
          response=m.OwnerLimitsOut),
    Route("PUT", "/v1/orgs/{id}/owners/{owner_id}/limits", owners.put_owner_limits,
          "Set the rate limits shared by an owner's keys", "organisations",
          body=m.OwnerLimits, response=m.OwnerLimitsOut),
    Route("DELETE", "/v1/orgs/{id}/owners/{owner_id}/limits", owners.delete_owner_limits,
          "Remove an owner's shared rate limits", "organisations", status=204),
    Route("POST", "/v1/orgs/{id}/webhooks", webhooks.create_webhook,
          "Register a webhook endpoint; its signing secret is in the response once",
          "webhooks", body=m.WebhookCreate, response=m.WebhookCreated, status=201),
    Route("GET", "/v1/orgs/{id}/webhooks", webhooks.list_webhooks,
          "List an organisation's webhook endpoints", "webhooks", query=m.WebhookListQuery,
          response=m.WebhookList),
    Route("GET", "/v1/orgs/{id}/webhooks/{wid}", webhooks.get_webhook,
          "Read a webhook endpoint", "webhooks", response=m.WebhookOut),
    Route("PATCH", "/v1/orgs/{id}/webhooks/{wid}", webhooks.update_webhook,
          "Change a webhook endpoint (enabled: true re-enables one disabled for failing)",
          "webhooks", body=m.WebhookUpdate, response=m.WebhookOut),
    Route("DELETE", "/v1/orgs/{id}/webhooks/{wid}", webhooks.delete_webhook,
          "Remove a webhook endpoint and its deliveries", "webhooks", status=204),
    Route("POST", "/v1/orgs/{id}/webhooks/{wid}/rotate", webhooks.rotate_webhook,
          "Roll the signing secret; the old one signs beside it for grace_seconds",
          "webhooks", body=m.WebhookRotate, response=m.WebhookRotated),
    Route("GET", "/v1/orgs/{id}/webhooks/{wid}/deliveries", webhooks.list_deliveries,
          "An endpoint's deliveries and their attempts, newest first", "webhooks",
          query=m.DeliveryListQuery, response=m.DeliveryList),
    Route("POST", "/v1/orgs/{id}/webhooks/{wid}/deliveries/{did}/retry",
          webhooks.retry_delivery, "Send a delivery again now", "webhooks",
          response=m.Delivery),
    Route("POST", "/v1/keys", keys.create_key, "Create a key; the raw key is in the response "
          "once", "keys", body=m.KeyCreate, response=m.KeyCreated, status=201),
    Route("GET", "/v1/keys", keys.list_keys, "List keys (metadata only)", "keys",
          query=m.KeyListQuery, response=m.KeyList),
    Route("GET", "/v1/keys/self", keys.get_self, "The calling key's own record", "keys",
          response=m.KeyOut, access="key"),
    Route("GET", "/v1/keys/{id}", keys.get_key, "Read a key", "keys", response=m.KeyOut,
          access="any"),
    Route("PATCH", "/v1/keys/{id}", keys.update_key, "Update a key", "keys",
          body=m.KeyUpdate, response=m.KeyOut),
    Route("DELETE", "/v1/keys/{id}", keys.delete_key, "Delete a key", "keys", status=204),
    Route("POST", "/v1/keys/{id}/rotate", keys.rotate_key, "Give a key a new secret", "keys",
          body=m.RotateRequest, response=m.KeyRotated),
    Route("POST", "/v1/keys/{id}/revoke", keys.revoke_key, "Revoke a key (irreversible)",
          "keys", response=m.KeyOut),
    Route("POST", "/v1/keys/{id}/pause", keys.pause_key, "Pause a key", "keys",
          response=m.KeyOut),
    Route("POST", "/v1/keys/{id}/resume", keys.resume_key, "Resume a paused key", "keys",
          response=m.KeyOut),
    Route("PUT", "/v1/keys/{id}/default", keys.set_default, "Make the owner's default key",
          "keys", response=m.KeyOut),
    Route("DELETE", "/v1/keys/{id}/default", keys.unset_default,
          "Stop being the owner's default key", "keys", response=m.KeyOut),
    Route("GET", "/v1/keys/{id}/usage", usage.get_usage, "A key's usage counters", "usage",
          response=m.UsageOut, access="any"),
    Route("POST", "/v1/keys/{id}/usage", usage.change_usage, "Set, increment or decrement the "
          "lifetime usage count", "usage", body=m.UsageChange, response=m.UsageOut),
    Route("GET", "/v1/usage/series", usage.get_series, "Requests over the last hour (per "
          "minute), day (per 15 minutes) or 30 days (per day): forwarded, refused by code, "
          "and by status, for a key, an owner, an organisation or everything", "usage",
          query=m.UsageSeriesQuery, response=m.UsageSeries),
    Route("GET", "/v1/usage/limited", usage.get_limited, "The keys answered 429 most in the "
          "last minutes", "usage", query=m.LimitedQuery, response=m.LimitedList),
    Route("POST", "/v1/verify", verify.verify, "Verify a key for a service not behind the "
          "gateway", "verify", body=m.VerifyRequest, response=m.VerifyResult),
    Route("GET", "/v1/audit", audit.list_audit, "The audit trail, newest first", "audit",
          query=m.AuditQuery, response=m.AuditList),
)


def add_routes(app: web.Application) -> None:
    """Every route, and each again under the console's prefix, where its session may stand
    in for the credential (``admin_api.session``)."""
    # One loop per prefix: aiohttp gathers the methods of a path into one resource only
    # while they are added one after another (the 405's Allow header reads that resource).
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.endpoint())
    for route in ROUTES:
        if route.path.startswith("/v1/"):
            app.router.add_route(route.method, session.API + route.path, route.endpoint())
