"""Seed dialects: each serves one real API-key system's documented management API over the
same core operations (``admin_api/handlers/keys.py``), translating paths, field names,
status codes and auth schemes. Enabled with ``dialects = [...]`` in the config file."""

from __future__ import annotations

from aiohttp import web

from admin_api.dialects import regen, scrubbe, scrubs
from gateway.settings import Settings

MODULES = {"scrubs": scrubs, "scrubbe": scrubbe, "regen": regen}


def mount(app: web.Application, settings: Settings) -> None:
    for name in settings.dialects:
        module = MODULES[name]
        prefix = settings.dialect_options(name).prefix
        for method, path, handler in module.ROUTES:
            app.router.add_route(method, prefix + path, handler)
