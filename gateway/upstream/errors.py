"""What can go wrong talking to an upstream, as the proxy needs to tell it apart: too slow
(504) or unreachable / broken (502)."""

from __future__ import annotations


class UpstreamError(Exception):
    """The upstream exchange failed; the message says how, for logs and for the client."""


class UpstreamTimeout(UpstreamError):
    """Connecting, or one read of the response, took longer than the route's timeout."""


class UpstreamUnavailable(UpstreamError):
    """The upstream could not be reached, closed the connection or broke HTTP/1.1."""
