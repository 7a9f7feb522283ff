"""Sample documents the coordination tests share."""

# What sessions.py writes today: the first replica imports it as it is.
TODAY = {
    "version": 1,
    "sessions": [
        {
            "name": "run-1",
            "date_prefix": "20261204",
            "state": "drained",
            "started_at": 1764806400.5,
            "stopped_at": 1764810000.25,
            "redrained_at": None,
        },
        {
            "name": "run-2",
            "date_prefix": "20261204",
            "state": "active",
            "started_at": 1764810001.0,
            "stopped_at": None,
            "redrained_at": None,
        },
    ],
}
