"""Where a route's requests go: scheme, host and port, parsed once per upstream."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from yarl import URL


@dataclass(frozen=True, slots=True)
class Origin:
    key: str  # scheme://host:port, what the pools are keyed by
    tls: bool
    host: str  # as connect() takes it: an IPv6 address without brackets
    port: int
    host_header: str  # host[:port], the port only when not the scheme's default


@functools.lru_cache(maxsize=256)
def origin_of(url: str) -> Origin:
    """The origin of ``url`` (``scheme://host[:port]``, with or without a path)."""
    parsed = URL(url)
    host, port = parsed.host, parsed.port
    if parsed.scheme not in ("http", "https") or host is None or port is None:
        raise ValueError(f"not an http(s) URL with a host: {url!r}")
    host_header = parsed.host_port_subcomponent
    assert host_header is not None  # an absolute URL has one
    return Origin(str(parsed.origin()), parsed.scheme == "https", host, port, host_header)
