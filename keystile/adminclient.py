"""A small client of the admin API for the command line: the credential from the
environment only, no redirects followed, and every failure turned into a one-line message
with the exit code a script can rely on."""

from __future__ import annotations

import argparse
import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from keystile.redact import redact

DEFAULT_URL = "http://127.0.0.1:8081"
TIMEOUT_S = 30.0
PAGE_MAX = 1000  # the list endpoints' largest page
REFUSED, NOT_FOUND, DENIED, UNREACHABLE = 1, 3, 4, 5

Json = dict[str, Any]


class Failure(Exception):
    """A command that did not succeed: the lines for stderr and the exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# ---- the client ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    text: str  # the body as received, for --json
    data: Any


@dataclass(frozen=True, slots=True)
class Client:
    url: str
    headers: dict[str, str] = field(repr=False)  # holds the credential

    @classmethod
    def from_args(cls, args: argparse.Namespace, env: Mapping[str, str]) -> Client:
        headers = {"Accept": "application/json", "User-Agent": "keystile-cli"}
        if token := _credential(env, "KEYSTILE_ADMIN_TOKEN"):
            headers["Authorization"] = f"Bearer {token}"
        elif key := _credential(env, "KEYSTILE_ADMIN_KEY"):
            headers["X-API-Key"] = key
        return cls(args.admin_url, headers)

    @property
    def has_credential(self) -> bool:
        return "Authorization" in self.headers or "X-API-Key" in self.headers

    def call(self, method: str, path: str, *, query: Mapping[str, object] | None = None,
             body: Json | None = None) -> Reply:
        url = self.url + path
        if query:
            url += "?" + urllib.parse.urlencode({k: _query_value(v) for k, v in query.items()
                                                 if v is not None})
        headers = dict(self.headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        # admin_url accepts only http(s); redirects are not followed (see _NoRedirects).
        request = urllib.request.Request(url, data=data, headers=headers,  # noqa: S310
                                         method=method)
        try:
            with _OPENER.open(request, timeout=TIMEOUT_S) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, _read(exc)
            if 300 <= status < 400:
                raise Failure(f"keystile: error: {redact(self.url)} answered {status}, a "
                              f"redirect to {exc.headers.get('Location', 'nowhere')}; the admin "
                              "API never redirects, so --admin-url is not pointing at it "
                              "(the credential was not sent on)", UNREACHABLE) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise Failure(f"keystile: error: cannot reach the admin API at "
                          f"{redact(self.url)}: {_describe(reason)}; is it running there? "
                          "(set --admin-url or KEYSTILE_ADMIN_URL)", UNREACHABLE) from None
        text = raw.decode("utf-8", "replace")
        parsed = _json(text)
        if status >= 400:
            raise self._refusal(status, parsed, text)
        if status != 204 and parsed is None:
            raise Failure(f"keystile: error: {redact(self.url)} answered {status} with "
                          "something other than JSON; is it the admin API?", UNREACHABLE)
        return Reply(status, text, parsed)

    def _refusal(self, status: int, parsed: Any, text: str) -> Failure:
        error = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(error, dict) and "code" in error and "message" in error:
            line = f"keystile: {error['code']}: {error['message']}"
        else:
            line = f"keystile: http_{status}: {' '.join(text.split())[:200] or 'no body'}"
        if status in (401, 403):
            if not self.has_credential:
                line += ("\nkeystile: hint: set KEYSTILE_ADMIN_TOKEN to the operator token "
                         "(or KEYSTILE_ADMIN_KEY to a root key)")
            return Failure(line, DENIED)
        if status == 404:
            return Failure(line, NOT_FOUND)
        return Failure(line, UNREACHABLE if status >= 500 else REFUSED)

    def every(self, path: str, query: Mapping[str, object], limit: int | None) -> Json:
        """All pages (up to ``limit`` rows) as one list document, shaped as a page is."""
        rows: list[Any] = []
        cursor: str | None = None
        while True:
            want = PAGE_MAX if limit is None else min(PAGE_MAX, limit - len(rows))
            page = self.call("GET", path, query={**query, "limit": want, "cursor": cursor}).data
            rows += page["data"]
            cursor = page["next_cursor"]
            if cursor is None or not page["data"] or (limit is not None and len(rows) >= limit):
                return {"data": rows, "next_cursor": cursor}


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """The admin API never redirects; following one would send the credential elsewhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def _credential(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not all(" " <= c <= "~" for c in value):
        raise Failure(f"keystile: error: {name} holds characters an HTTP header cannot "
                      "carry; set it to the credential alone", DENIED)
    return value


def _query_value(value: object) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _read(exc: urllib.error.HTTPError) -> bytes:
    try:
        return exc.read()
    except (OSError, http.client.HTTPException):
        return b""


def _json(text: str) -> Any:
    try:
        return json.loads(text) if text.strip() else None
    except ValueError:
        return None


def _describe(reason: object) -> str:
    if isinstance(reason, BaseException):
        detail = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
        return str(detail)
    return str(reason)


def path(*parts: str) -> str:
    """An API path from its segments, each quoted (an id cannot add a segment)."""
    return "".join("/" + urllib.parse.quote(p, safe="") for p in parts)
