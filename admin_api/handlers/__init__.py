"""Request handlers of the admin API, one module per resource."""
