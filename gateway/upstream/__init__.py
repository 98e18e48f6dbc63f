"""Keystile's own HTTP/1.1 client towards upstreams (see client.py)."""

from gateway.upstream.client import UpstreamClient
from gateway.upstream.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from gateway.upstream.head import InvalidHead, request_head
from gateway.upstream.origin import Origin, origin_of
from gateway.upstream.response import UpstreamResponse

__all__ = ["InvalidHead", "Origin", "UpstreamClient", "UpstreamError", "UpstreamResponse",
           "UpstreamTimeout", "UpstreamUnavailable", "origin_of", "request_head"]
