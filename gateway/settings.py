"""Configuration: one TOML file validated by pydantic, with ``KEYSTILE_*`` environment
variables overriding the store URLs and the operator token."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ENV_OVERRIDES = {
    "KEYSTILE_DATABASE_URL": ("database_url",),
    "KEYSTILE_REDIS_URL": ("redis_url",),
    "KEYSTILE_ADMIN_TOKEN": ("admin", "token"),
}


MIN_TOKEN_LEN = 16


class ConfigError(Exception):
    """The configuration file or environment is invalid; the message says what to fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AdminSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8081, ge=1, le=65535)
    token: str | None = Field(None, min_length=MIN_TOKEN_LEN, description="the operator token")
    request_body_limit: int = Field(1 << 20, ge=1024)


class StoreSettings(_Strict):
    pool_min_size: int = Field(1, ge=0)
    pool_max_size: int = Field(10, ge=1)
    timeout_s: float = Field(5.0, gt=0)


class Settings(_Strict):
    database_url: str = "postgresql://keystile@127.0.0.1:5432/keystile"
    redis_url: str = "redis://127.0.0.1:6379/0"
    admin: AdminSettings = AdminSettings()
    stores: StoreSettings = StoreSettings()

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str) -> str:
        if not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def load(path: Path | None, environ: dict[str, str] | None = None) -> Settings:
    """Reads ``path`` (optional) and applies environment overrides."""
    env = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    for var, dotted in ENV_OVERRIDES.items():
        if env.get(var):
            target = data
            for part in dotted[:-1]:
                target = target.setdefault(part, {})
                if not isinstance(target, dict):
                    raise ConfigError(f"invalid configuration: {part} must be a table "
                                      f"([{part}]), not a value")
            target[dotted[-1]] = env[var]
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        source = str(path) if path else "the environment"
        raise ConfigError(f"invalid configuration in {source}: {_describe(exc)}") from None
