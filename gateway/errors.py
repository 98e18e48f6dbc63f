"""The gateway's refusals: one error class carrying a public code, rendered in exactly one
place as JSON (default), a FHIR OperationOutcome, or an HL7 v2 ACK."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
from aiohttp import web

from gateway.verification import PUBLIC_ERRORS, Code

# Codes of the data plane beyond the key verdicts, with status and default message.
GATEWAY_ERRORS: dict[str, tuple[int, str]] = {
    **{code.value: entry for code, entry in PUBLIC_ERRORS.items()},
    "invalid_path": (400, "the request path is not acceptable"),
    "key_in_query": (400, "API keys are not accepted in the query string"),
    "key_in_path": (400, "API keys are not accepted in the path"),
    "invalid_header": (400, "a request header cannot be forwarded unchanged"),
    "route_not_found": (404, "no route matches this path"),
    "method_not_allowed": (405, "this route does not accept this method"),
    "payload_too_large": (413, "the request body is too large"),
    "headers_too_large": (431, "the request headers are too large"),
    "rate_limited": (429, "too many requests; retry later"),
    "usage_exceeded": (429, "the key's usage allowance is used up"),
    "upstream_unavailable": (502, "the upstream service could not be reached"),
    "upstream_timeout": (504, "the upstream service did not answer in time"),
    "store_unavailable": (503, "a backing store is unavailable; retry later"),
    "internal_error": (500, "unexpected gateway error; quote the request id"),
}

# FHIR issue-type codes (http://hl7.org/fhir/issue-type) for each status.
_FHIR_TYPES = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found",
               405: "not-supported", 413: "too-long", 429: "throttled", 431: "too-long",
               502: "transient", 503: "transient", 504: "timeout"}


class GatewayError(Exception):
    """A request stopped by the gateway, with its public code."""

    def __init__(self, code: str | Code, message: str | None = None,
                 headers: dict[str, str] | None = None, status: int | None = None) -> None:
        self.code = str(code)
        known_status, default = GATEWAY_ERRORS.get(self.code, (500, "error"))
        self.status = status or known_status
        self.message = message or default
        self.headers = headers or {}
        super().__init__(self.message)


def _format(request: web.Request) -> str:
    wanted = request.headers.get("x-response-format", "").strip().lower()
    if wanted in ("fhir", "hl7"):
        return wanted
    if "application/fhir+json" in request.headers.get("Accept", ""):
        return "fhir"
    return "json"


def _hl7(error: GatewayError, request_id: str) -> bytes:
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    ack = "AE" if error.status >= 500 else "AR"
    text = error.message.replace("|", "/").replace("^", "/")
    return "\r".join((
        f"MSH|^~\\&|KEYSTILE|GATEWAY|||{stamp}||ACK|{request_id}|P|2.5",
        f"MSA|{ack}|{request_id}|{text}",
        f"ERR|||{error.code}^{text}|E",
    )).encode() + b"\r"


def render(request: web.Request, error: GatewayError, request_id: str,
           json_body: dict[str, object] | None = None) -> web.Response:
    """The error in the format the client asked for; ``json_body`` replaces the default JSON
    shape (dialects have their own)."""
    kind = _format(request)
    if kind == "fhir":
        body = orjson.dumps({"resourceType": "OperationOutcome", "issue": [{
            "severity": "error", "code": _FHIR_TYPES.get(error.status, "processing"),
            "details": {"coding": [{"system": "urn:keystile:error", "code": error.code}],
                        "text": error.message},
            "diagnostics": f"request_id={request_id}"}]})
        content_type = "application/fhir+json"
    elif kind == "hl7":
        body = _hl7(error, request_id)
        content_type = "x-application/hl7-v2+er7"
    elif json_body is not None:
        body = orjson.dumps(json_body)
        content_type = "application/json"
    else:
        body = orjson.dumps({"error": {"code": error.code, "message": error.message,
                                       "request_id": request_id}})
        content_type = "application/json"
    response = web.Response(status=error.status, body=body, content_type=content_type)
    response.headers.update(error.headers)
    return response
