"""Webhooks: signing, sending, and the expiry scheduler (every admin instance runs them)."""
