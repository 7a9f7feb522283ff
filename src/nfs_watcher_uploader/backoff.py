"""Backoff between attempts, shared by uploads, start-up steps, manifests and webhooks."""

import random


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: base * 2**(attempt-1), capped, times 0.5-1.0."""
    raw = min(cap, base * 2 ** min(attempt - 1, 30))
    return raw * (0.5 + rng.random() / 2)
