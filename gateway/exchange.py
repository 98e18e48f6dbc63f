"""What the pipeline knows about one request; each stage fills in its part."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiohttp import web

from gateway.keyrecord import KeyRecord
from gateway.limits.decision import Decision
from gateway.routing import Route


@dataclass(slots=True)
class Exchange:
    request: web.Request
    request_id: str
    started: float = field(default_factory=time.perf_counter)
    path: str = ""  # normalised: what is routed, scope-checked and forwarded
    query: str = ""  # raw query string, forwarded unchanged
    route: Route | None = None
    raw_key: str | None = None  # None: no credential was sent
    provider: str | None = None  # named by the credential itself (Open Dental)
    key: KeyRecord | None = None  # set once the key is verified to exist
    decision: Decision | None = None  # what the limits said (and spent)
    upstream_s: float | None = None  # how long the upstream took to answer (headers)
    error: str | None = None  # the refusal's code, when the gateway refused
    headers_s: float | None = None  # from arrival to the response headers

    @property
    def matched(self) -> Route:
        assert self.route is not None, "the route stage runs first"
        return self.route
