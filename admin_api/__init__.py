"""Keystile control plane: the admin API over organisations and keys in PostgreSQL."""
