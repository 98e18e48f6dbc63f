"""Log lines made fit for operators.

- aiohttp logs a malformed request with a traceback that quotes the offending bytes — which
  may be a header carrying an API key: the event is kept, the bytes dropped.
- asyncpg's pool logs every failed attempt to reconnect while PostgreSQL is down with a full
  traceback (several a minute per process): the line is kept, with the error's type and
  message in place of the traceback."""

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


class OneLineReconnects(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            record.msg = f"{record.getMessage()} ({type(exc).__name__}: {exc})"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


def install() -> None:
    """Idempotent: attach each filter to its logger once."""
    for name, kind in (("aiohttp.server", DropParserDetail),
                       ("asyncpg.pool", OneLineReconnects)):
        logger = logging.getLogger(name)
        if not any(isinstance(f, kind) for f in logger.filters):
            logger.addFilter(kind())
