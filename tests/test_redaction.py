"""No error text shows a URL's user or query string, nor a signature or key written out."""

import pytest

from nfs_watcher_uploader.redaction import redact


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            "400, message='Bad status line', url='http://127.0.0.1:1/a/c/b?sv=1&sig=SECRET'",
            "400, message='Bad status line', url='http://127.0.0.1:1/a/c/b?<redacted>'",
        ),
        ("https://user:SECRET@host:443/path#frag", "https://host:443/path#<redacted>"),
        ("URL('https://h/p?sig=SECRET')", "URL('https://h/p?<redacted>')"),
        ('{"m": "https://h/p?sig=SECRET\\" x"}', '{"m": "https://h/p?<redacted>\\" x"}'),
        ("AccountKey=SECRET==;EndpointSuffix=x", "AccountKey=<redacted>;EndpointSuffix=x"),
        (
            "SharedAccessSignature=sv=1&sig=SECRET",
            "SharedAccessSignature=<redacted>&sig=<redacted>",
        ),
        ("se=2099&sig=SECRET%2B", "se=2099&sig=<redacted>"),
        ("Authorization: Bearer SECRET", "Authorization: Bearer <redacted>"),
        ("cam1/rec.bin: storage refused the blob", "cam1/rec.bin: storage refused the blob"),
    ],
)
def test_every_url_query_and_credential_is_redacted(text: str, shown: str) -> None:
    assert redact(text) == shown
    assert "SECRET" not in redact(text)
