"""Size caps of every admin and dialect input, defined once: the models validate against
them (the OpenAPI document shows them) and the README's table lists them. They keep one key
from becoming a burden on its upstream, the gateway or the stores."""

from __future__ import annotations

from typing import Annotated

from pydantic import StringConstraints

from gateway.keyformat import MAX_PREFIX_LEN

MAX_NAME_LEN = 200  # key, organisation and dialect display names
MAX_ID_LEN = 200  # owner ids, and ids and filters given in query strings
MAX_SCOPES = 50  # per key, per key_defaults, per verify request
MAX_SCOPE_LEN = 128
MAX_RATE_LIMITS = 10  # windows per key, organisation, owner or key_defaults
MAX_METADATA_BYTES = 4096  # serialised as compact JSON
MAX_METADATA_DEPTH = 5  # objects and arrays nested in metadata, the top level counting 1
MAX_METADATA_KEYS = 64  # top-level keys
MAX_CURSOR_LEN = 64  # cursors this API hands out are ~30 characters
MAX_RAW_KEY_LEN = 512  # a key presented to /v1/verify
MAX_KEY_PREFIX_LEN = MAX_PREFIX_LEN  # 24
MAX_PROVIDER_ID_LEN = 64  # see gateway.verification.PROVIDER_PATTERN
MAX_WEBHOOKS = 16  # endpoints per organisation: every event is one delivery to each

# The gateway tells upstreams a key's scopes in one header (space-separated); with the caps
# above it stays below the 8 KB most servers accept for one header line (a test holds it).
MAX_SCOPES_HEADER_BYTES = MAX_SCOPES * (MAX_SCOPE_LEN + 1) - 1

Name = Annotated[str, StringConstraints(max_length=MAX_NAME_LEN)]
NonEmptyName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_LEN)]
ExternalId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LEN)]
# Cursors are the last position of the previous page, so the schema can say exactly which
# strings are cursors: any id (organisations) or a number (keys, audit entries).
Cursor = Annotated[str, StringConstraints(min_length=1, max_length=MAX_CURSOR_LEN)]
IntCursor = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,18}$")]
