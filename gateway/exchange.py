"""What the pipeline knows about one request; each stage fills in its part."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.keyrecord import KeyRecord
from gateway.limits import Decision
from gateway.routing import Route


@dataclass(slots=True)
class Exchange:
    request: web.Request
    request_id: str
    path: str = ""  # normalised: what is routed, scope-checked and forwarded
    query: str = ""  # raw query string, forwarded unchanged
    route: Route | None = None
    raw_key: str | None = None  # None: no credential was sent
    key: KeyRecord | None = None  # set once the key is verified to exist
    decision: Decision | None = None  # what the limits said (and spent)
    upstream_s: float | None = None  # how long the upstream took to answer (headers)

    @property
    def matched(self) -> Route:
        assert self.route is not None, "the route stage runs first"
        return self.route
