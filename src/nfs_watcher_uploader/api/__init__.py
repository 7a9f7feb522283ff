"""The HTTP API: routes, the bearer token, and what one client may cost."""
