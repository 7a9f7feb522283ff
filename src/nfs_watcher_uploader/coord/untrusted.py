"""Reading JSON back from the control container, where anyone allowed to write it may have put
anything: the size is capped before it is parsed, the nesting depth before it is built, and
the caller then checks shape and meaning."""

import json
import re

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")


def load_json(raw: bytes, max_bytes: int, max_depth: int) -> object:
    """The JSON value in `raw`; ValueError saying why when it is too big, too deep, or not
    JSON (nothing larger than `max_bytes` is parsed)."""
    if len(raw) > max_bytes:
        raise ValueError(f"{len(raw)} bytes; at most {max_bytes} are read")
    depth = deepest = 0
    for bracket in _BRACKET.finditer(_STRING.sub(b'""', raw)):
        depth += 1 if bracket.group() in (b"[", b"{") else -1
        deepest = max(deepest, depth)
        if deepest > max_depth:
            raise ValueError(f"nested deeper than {max_depth} levels")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
