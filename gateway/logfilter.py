"""aiohttp logs a malformed request with a traceback that quotes the offending bytes — which
may be a header carrying an API key. This filter keeps the event and drops the bytes."""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import HttpProcessingError


class DropParserDetail(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg = "refused a malformed HTTP request from %s (%s)"
            record.args = (remote, type(exc).__name__)
            record.exc_info = None
            record.exc_text = None
        return True


def install() -> None:
    """Idempotent: attach the filter to aiohttp's server logger once."""
    logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, DropParserDetail) for f in logger.filters):
        logger.addFilter(DropParserDetail())
