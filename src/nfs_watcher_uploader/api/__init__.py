"""The HTTP API: routes, the bearer token, and what one client may cost.

routes    the endpoints, and the error answers (4xx or 503, never a traceback)
views     the service's state as response bodies
schemas   request and response bodies (pydantic)
auth      the API token, checked before a body is read
page      the status page at /, its static files, and /docs (all from the package)
headers   security headers on every answer; cross-site changes refused
limits    what one HTTP client can cost the process
"""
