"""The route table, compiled once from the config: longest prefix wins."""

from __future__ import annotations

from dataclasses import dataclass

from yarl import URL

from gateway.credentials import EXTRACTORS, Extractor
from gateway.paths import under
from gateway.settings import RouteSettings


@dataclass(frozen=True, slots=True)
class Route:
    prefix: str
    upstream: URL
    strip_prefix: bool
    auth: str  # required | optional | none
    scopes: dict[str, tuple[str, ...]]
    methods: frozenset[str] | None
    extractor: Extractor
    provider_header: str | None
    cost: int
    timeout_s: float
    refund_on_upstream_error: bool
    enforce: bool
    origin: str  # scheme://host:port of the upstream
    base_path: str  # the upstream URL's own path, without a trailing '/'

    def required_scopes(self, method: str) -> tuple[str, ...] | None:
        """The scopes ``method`` needs; None when the route lists scopes but none for this
        method (nor "*"), which no key can satisfy — unlisted methods are closed."""
        if not self.scopes:
            return ()
        method = "GET" if method == "HEAD" and "HEAD" not in self.scopes else method
        return self.scopes.get(method, self.scopes.get("*"))

    def upstream_url(self, path: str, query: str) -> URL:
        """The upstream URL for the normalised ``path``; the query passes unchanged."""
        if self.strip_prefix and self.prefix != "/":
            path = path[len(self.prefix.rstrip("/")):] or "/"
        target = f"{self.origin}{self.base_path}{path}" + (f"?{query}" if query else "")
        return URL(target, encoded=True)



def compile_route(config: RouteSettings) -> Route:
    upstream = URL(config.upstream)
    return Route(
        prefix=config.prefix,
        upstream=upstream,
        strip_prefix=config.strip_prefix,
        auth=config.auth,
        scopes={m: tuple(s) for m, s in config.scopes.items()},
        methods=frozenset(config.methods) if config.methods is not None else None,
        extractor=EXTRACTORS[config.credentials],
        provider_header=config.provider_header,
        cost=config.cost,
        timeout_s=config.timeout_s,
        refund_on_upstream_error=config.refund_on_upstream_error,
        enforce=config.enforce,
        origin=str(upstream.origin()),
        base_path=upstream.raw_path.rstrip("/"),
    )


class RouteTable:
    def __init__(self, configs: list[RouteSettings]) -> None:
        # Longest first, so the first match is the most specific.
        self.routes = sorted((compile_route(c) for c in configs),
                             key=lambda r: len(r.prefix.rstrip("/")), reverse=True)

    def match(self, path: str) -> Route | None:
        for route in self.routes:
            if under(path, route.prefix):
                return route
        return None
