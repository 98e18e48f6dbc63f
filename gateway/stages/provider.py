"""When the route names a provider header and the client sends it, the key must belong to
that provider's organisation (otherwise it looks exactly like an unknown key)."""

from __future__ import annotations

from gateway.deps import Deps
from gateway.errors import GatewayError
from gateway.exchange import Exchange
from gateway.verification import Code, check_provider


async def check(ex: Exchange, deps: Deps) -> None:
    extractor = ex.matched.extractor
    header = ex.matched.provider_header or extractor.provider_header
    if ex.key is None or (header is None and ex.provider is None):
        return
    provider = ex.provider if ex.provider is not None else ex.request.headers.get(header or "")
    if provider is None:
        if extractor.provider_required:
            raise GatewayError(Code.MISSING_KEY, f"send the {header} header with your key")
        return
    org_id = await deps.providers.org_id(provider.strip())
    if org_id is None:
        raise GatewayError(Code.INVALID_PROVIDER,
                           f"{header or 'the credential'} names no organisation; check the "
                           "provider id")
    if check_provider(ex.key, org_id) is not Code.VALID:
        raise GatewayError(Code.INVALID_KEY)
