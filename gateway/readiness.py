"""Readiness probes shared by both listeners: a store call that must answer in time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

READY_TIMEOUT_S = 2.0


async def probe(check: Awaitable[object]) -> str:
    """"ok", or why not; readiness reports any failure, it never raises."""
    try:
        await asyncio.wait_for(check, READY_TIMEOUT_S)
        return "ok"
    except Exception as exc:
        return f"unavailable ({type(exc).__name__})"
