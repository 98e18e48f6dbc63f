"""Keystile data plane: the authenticating proxy and the key-domain code both planes share."""
