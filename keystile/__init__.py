"""Keystile command line and the embedded development stack."""
