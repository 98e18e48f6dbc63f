"""Where a request carries its key: one extractor per convention, chosen per route.

An extractor returns the raw key (or None when absent) and names the headers that carried
it, so the proxy can make sure the credential never reaches the upstream."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import unquote_plus

from multidict import CIMultiDictProxy

from gateway import keyformat

# Query parameters a client might put a key in: a request without a key that uses one is
# told to use the header instead.
KEY_QUERY_PARAMETERS = ("api_key", "apikey", "apiKey", "key", "x-api-key", "token")
_DECODINGS = 3  # a key percent-encoded twice is still a key to a server that decodes twice


def _spellings(query: str) -> Iterator[str]:
    """The query as sent, then decoded once, twice, … while that changes it."""
    yield query
    for _ in range(_DECODINGS):
        decoded = unquote_plus(query)
        if decoded == query:
            return
        query = decoded
        yield query


def key_in_query(query: str, presented: str | None) -> bool:
    """True when the raw query string carries a well-formed key (any organisation's, as a
    name or a value), or the key presented in the header."""
    return any(key_in(text, presented) for text in _spellings(query))


def key_in(text: str, presented: str | None) -> bool:
    """True when ``text`` (decoded) carries a well-formed key, or the presented one. Open
    Dental's 16-character keys have no checksum, so only the presented one is recognised: any
    16 capitals could be an ordinary value."""
    if presented is not None and len(presented) >= keyformat.CUSTOMER_KEY_LEN \
            and presented in text:
        return True  # (no key is shorter: the parse stage refuses one as malformed)
    return keyformat.contains_key(text)


@dataclass(frozen=True, slots=True)
class Extractor:
    headers: tuple[str, ...]  # removed before forwarding
    scheme: str | None = None  # e.g. "Bearer": the header value is "<scheme> <key>"
    provider_header: str | None = None  # the convention's own provider header, if any
    provider_required: bool = False  # a request without it is refused
    provider_in_credential: bool = False  # "<provider>/<key>" in the one header
    customer_keys: bool = False  # Open Dental's 16 upper-case alphanumerics
    shape: str | None = None  # the header's whole format, when a header name does not say it

    def how_to_send(self) -> str:
        """Where the key goes, for the message that asks for it."""
        if self.shape is not None:
            return f"as '{self.shape}'"
        return f"in the {self.headers[0]} header"

    def extract(self, headers: CIMultiDictProxy[str]) -> str | None:
        value = headers.get(self.headers[0])
        if value is None:
            return None
        value = value.strip()
        if self.scheme is None:
            return value
        scheme, _, key = value.partition(" ")
        if scheme.lower() != self.scheme.lower():  # schemes are case-insensitive (RFC 9110)
            return ""
        if self.provider_in_credential:
            return key.strip().partition("/")[2]
        return key.strip()

    def provider(self, headers: CIMultiDictProxy[str]) -> str | None:
        """The provider the credential itself names ("<provider>/<key>"), if it does."""
        if not self.provider_in_credential:
            return None
        value = headers.get(self.headers[0], "")
        _, _, credential = value.partition(" ")
        provider, sep, _ = credential.strip().partition("/")
        return provider if sep else None


EXTRACTORS: dict[str, Extractor] = {
    "x-api-key": Extractor(("X-API-Key",)),
    "bearer": Extractor(("Authorization",), scheme="Bearer"),
    # Seed dialects' client conventions.
    "scrubs": Extractor(("X-Scrubs-Clinic-Api-Key",),
                        provider_header="X-Scrubs-Clinic-Provider", provider_required=True),
    "scrubbe": Extractor(("X-API-Key",)),
    "nuxera": Extractor(("x-api-key",)),
    "opendental": Extractor(("Authorization",), scheme="ODFHIR", provider_in_credential=True,
                            provider_required=True, customer_keys=True,
                            shape="Authorization: ODFHIR {DeveloperKey}/{CustomerKey}"),
    "regen": Extractor(("X-API-Key",)),
}
CREDENTIAL_KINDS = tuple(EXTRACTORS)
