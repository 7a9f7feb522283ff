"""A scripted stand-in for Blob Storage on 127.0.0.1, plain or TLS: it answers each request with
the next answer of its script (a status with an error code, or a dropped connection), 201 once
the script is done, and keeps every request it read (`requests`), so that a test can give the
SDK and the lean request path the same answers and compare what they did."""

import asyncio
import datetime
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.relay import Request, parse_requests

DROP = "drop"  # close the connection without an answer


@dataclass(frozen=True)
class Reply:
    status: int
    code: str | None = None
    headers: tuple[tuple[str, str], ...] = ()

    def encode(self) -> bytes:
        body = b""
        if self.code is not None:
            body = (
                '<?xml version="1.0" encoding="utf-8"?><Error><Code>'
                f"{self.code}</Code><Message>scripted {self.code}</Message></Error>"
            ).encode()
        head = [f"HTTP/1.1 {self.status} Scripted", f"Content-Length: {len(body)}"]
        if self.code is not None:
            head += ["Content-Type: application/xml", f"x-ms-error-code: {self.code}"]
        head += [f"{k}: {v}" for k, v in self.headers]
        return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@dataclass
class FakeStorage:
    script: list[Reply | str] = field(default_factory=list[Reply | str])
    requests: list[Request] = field(default_factory=list[Request])
    tls: ssl.SSLContext | None = None
    port: int = 0
    _server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}/devstoreaccount1"

    async def start(self) -> "FakeStorage":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def take(self) -> list[Request]:
        out, self.requests = self.requests, []
        return out

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                self.requests += parse_requests(head + body)
                reply = self.script.pop(0) if self.script else Reply(201)
                if reply == DROP:
                    break
                assert isinstance(reply, Reply)
                writer.write(reply.encode())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def self_signed(folder: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a fresh self-signed certificate for 127.0.0.1, and a client
    context that trusts exactly that certificate."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = folder / "cert.pem"
    key_pem = folder / "key.pem"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_pem, key_pem)
    client = ssl.create_default_context(cafile=str(cert_pem))
    return server, client
