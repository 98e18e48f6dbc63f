"""Typed application and request state of a gateway worker, declared once."""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.deps import Deps
from gateway.exchange import Exchange
from gateway.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
DEPS = web.AppKey("deps", Deps)
LISTENING = web.AppKey("listening", asyncio.Event)  # set while invalidations are received
EXCHANGE = web.RequestKey("exchange", Exchange)
