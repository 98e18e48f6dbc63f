"""The long-lived things a worker's stages use, built once at start-up."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.keycache import KeyLookup
from gateway.limits.exact import Limiter
from gateway.limits.fast import FastLimiter
from gateway.limits.local import LocalLimiter
from gateway.providers import ProviderLookup
from gateway.routing import RouteTable
from gateway.settings import GatewaySettings
from gateway.upstream import UpstreamClient
from gateway.usage import UsageRecorder


@dataclass(frozen=True, slots=True)
class Deps:
    settings: GatewaySettings
    routes: RouteTable
    keys: KeyLookup
    providers: ProviderLookup
    upstream: UpstreamClient
    limiter: Limiter
    usage: UsageRecorder
    local_limiter: LocalLimiter
    store_timeout_s: float  # the longest the checks of one request may wait on stores
    fast: FastLimiter | None = None  # limits_mode = "fast"
