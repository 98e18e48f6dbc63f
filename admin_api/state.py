"""Typed application state of the admin app, declared once."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from admin_api.webhooks.delivery import Sender
from gateway.limits.exact import Limiter
from gateway.redisclient import Store
from gateway.settings import Settings
from gateway.usage import UsageRecorder

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
REDIS: web.AppKey[Store] = web.AppKey("redis")
LIMITER = web.AppKey("limiter", Limiter)
USAGE = web.AppKey("usage", UsageRecorder)
SENDER = web.AppKey("sender", Sender)
