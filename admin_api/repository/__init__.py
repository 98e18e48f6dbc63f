"""SQL of the control plane. Functions take a connection so the caller owns the transaction."""
