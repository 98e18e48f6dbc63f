"""The console and what it reads: an admin API and a gateway on the same stores."""

from tests.admin_api.conftest import admin, org, root, settings  # noqa: F401
from tests.gateway.conftest import (  # noqa: F401
    gateway,
    gateway_settings,
    upstream,
)
