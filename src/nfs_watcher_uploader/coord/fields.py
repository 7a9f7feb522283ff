"""How values are written where storage takes them: ETags in conditional headers, labels in
blob metadata (an HTTP header: printable ASCII only)."""

from nfs_watcher_uploader.coord.constants import META_LABEL_MAX


def quoted(etag: str) -> str:
    """An ETag in the form conditional headers take (a listing gives it without quotes)."""
    return f'"{etag.strip(chr(34))}"'


def label(text: str) -> str:
    """A host name or version as a metadata value: printable ASCII, cut to a length."""
    clean = "".join(c if c.isascii() and c.isprintable() else "?" for c in text)
    return clean[:META_LABEL_MAX]


def plain(value: object) -> str:
    """A value the SDK may give as a str Enum (a lease status), as its plain text."""
    return str(getattr(value, "value", value))
