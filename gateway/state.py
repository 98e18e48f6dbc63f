"""Typed application and request state of a gateway worker, declared once."""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.deadlines import Deadlines
from gateway.deps import Deps
from gateway.exchange import Exchange
from gateway.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
DEPS = web.AppKey("deps", Deps)
DEADLINES = web.AppKey("deadlines", Deadlines)  # the store deadline of each request's checks
LISTENING = web.AppKey("listening", asyncio.Event)  # set while invalidations are received
# On the response, not the request: the exchange holds the request, and a request holding
# it back would make every request a reference cycle for the garbage collector to find.
EXCHANGE = web.ResponseKey("exchange", Exchange)
