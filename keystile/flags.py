"""The command line's flag values, parsed into what the admin API takes; a bad one is an
argparse error (exit 2) that shows the expected form."""

from __future__ import annotations

import argparse
import json
import re
import urllib.parse

from keystile.adminclient import Json
from keystile.redact import redact

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_RATE = re.compile(r"(\d+)/(\d*)([smhd]?)")
_QUOTA = re.compile(r"(\d+)/([a-z]+)")


def rate_limit(value: str) -> Json:
    found = _RATE.fullmatch(value.strip())
    if found is None or not (found[2] or found[3]):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a rate limit: write LIMIT/WINDOW, e.g. 100/60s, 10/s, 5000/1h")
    return {"limit": int(found[1]), "window_s": int(found[2] or 1) * _UNITS[found[3]]}


def quota(value: str) -> Json | None:
    if value == "none":
        return None
    found = _QUOTA.fullmatch(value.strip())
    if found is None or found[2] not in ("day", "week", "month"):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a quota: write LIMIT/PERIOD, e.g. 1000/day, 20000/week")
    return {"limit": int(found[1]), "period": found[2]}


def count(value: str) -> int | None:
    if value == "none":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None


def expiry(value: str) -> str | None:
    return None if value == "none" else value  # the API judges the time itself


def positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive whole number")
    return int(value)


def seconds(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None


def json_object(value: str) -> Json:
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"plan\": \"gold\"}'")
    return parsed


def admin_url(value: str) -> str:
    try:
        parts = urllib.parse.urlsplit(value.strip())
        usable = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises ValueError when out of range
    except ValueError:
        usable = False
    if not usable:
        raise argparse.ArgumentTypeError(
            f"{redact(value)!r} (from --admin-url or KEYSTILE_ADMIN_URL) is not an http:// or "
            "https:// URL, e.g. http://127.0.0.1:8081")
    return value.strip().rstrip("/")
