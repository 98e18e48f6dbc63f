"""Seed dialects: each serves one real API-key system's documented management API over the
same core operations (``admin_api/handlers/keys.py``), translating paths, field names,
status codes, error shapes and auth schemes. Every error under a dialect's path root
(``ROOT``) is answered in its shape (``error``), unknown paths, 405, 413 and 503 included.
Enabled with ``dialects = [...]`` in the config file."""

from __future__ import annotations

from aiohttp import web

from admin_api.dialects import nuxera, opendental, regen, scrubbe, scrubs
from admin_api.errors import ERROR_SHAPES, ErrorShape
from gateway.settings import ConfigError, Settings

MODULES = {"scrubs": scrubs, "scrubbe": scrubbe, "nuxera": nuxera,
           "opendental": opendental, "regen": regen}


def mount(app: web.Application, settings: Settings) -> None:
    if "nuxera" in settings.dialects and not settings.dialect_options("nuxera").jwt_secret:
        raise ConfigError("the nuxera dialect needs a JWT secret: set KEYSTILE_JWT_SECRET or "
                          "[dialect.nuxera] jwt_secret (at least 32 characters)")
    if "opendental" in settings.dialects and not settings.encryption_key:
        raise ConfigError("the opendental dialect keeps customer keys encrypted: set "
                          "KEYSTILE_ENCRYPTION_KEY (base64 of 32 random bytes, e.g. "
                          "`openssl rand -base64 32`)")
    shapes: dict[str, ErrorShape] = {}
    for name in settings.dialects:
        module = MODULES[name]
        prefix = settings.dialect_options(name).prefix
        for method, path, handler in module.ROUTES:
            app.router.add_route(method, prefix + path, handler)
        shapes[prefix + module.ROOT] = module.ERROR
    # The most specific root first: that is the one whose shape an error takes.
    app[ERROR_SHAPES] = dict(sorted(shapes.items(), key=lambda item: -len(item[0])))
