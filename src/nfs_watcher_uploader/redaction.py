"""`redact`: the one pass every error text that can carry a URL or a credential goes through
before it reaches a log line, an answer (/readyz, /v1/status.last_error) or a span.

Libraries put request URLs in their messages (aiohttp's `ClientResponseError` quotes the whole
URL, and a storage URL carries the SAS in its query string), so whatever an error says is
cleaned, not only what we write ourselves:

    scheme://user:password@host/path?query#fragment  ->  scheme://host/path?<redacted>
                                                    (#<redacted> for a fragment alone)
    sig=..., AccountKey=..., SharedAccessSignature=..., password=...  ->  name=<redacted>
    Bearer <token>                                                  ->  Bearer <redacted>
"""

import re

REDACTED = "<redacted>"

# A URL runs to the first character that cannot be in one unescaped (quotes, spaces, brackets,
# a backslash: the end of a JSON string or of a repr).
_URL = re.compile(r"""\b([A-Za-z][A-Za-z0-9+.\-]*://)([^\s'"<>\\`]*)""")
# Secrets that also travel outside a URL: a SAS's signature, a connection string's key or SAS.
_NAMED = re.compile(
    r"""(?i)\b(sig|accountkey|sharedaccesssignature|password|client_secret)=[^&;\s'"<>\\]+"""
)
_BEARER = re.compile(r"""(?i)\b(bearer)\s+[A-Za-z0-9\-._~+/=]+""")


def redact(text: str) -> str:
    """`text` without the user information and query strings of the URLs it holds, nor any
    signature, key or bearer token written out elsewhere in it."""
    if "://" not in text and "=" not in text and "earer" not in text:
        return text  # most texts: nothing to look for
    text = _URL.sub(_clean_url, text)
    text = _NAMED.sub(lambda m: f"{m[1]}={REDACTED}", text)
    return _BEARER.sub(lambda m: f"{m[1]} {REDACTED}", text)


def _clean_url(match: re.Match[str]) -> str:
    scheme, rest = match[1], match[2]
    end = len(rest)
    for mark in "/?#":
        if (at := rest.find(mark)) != -1:
            end = min(end, at)
    authority, tail = rest[:end], rest[end:]
    authority = authority.rpartition("@")[2]  # no user, no password
    for mark in "?#":
        if (at := tail.find(mark)) != -1:
            tail = tail[:at] + mark + REDACTED
            break
    return scheme + authority + tail
