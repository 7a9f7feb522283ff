"""No secret appears in a log line, an answer, a span or a metric."""

import json
import signal
import socket
import threading
import uuid
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest

from nfs_watcher_uploader.blob.credentials import PROBE_BLOB
from tests.support.helpers import (
    KEY,
    Azurite,
    ServiceProcess,
    blob_bytes,
    make_settings,
    wait_for,
    write_file,
)
from tests.support.otlp_receiver import OtlpReceiver


def test_no_secret_in_logs_answers_spans_or_metrics(
    tmp_path: Path, azurite: Azurite, container_name: str, receiver: OtlpReceiver
) -> None:
    marker = f"MARKER{uuid.uuid4().hex}"
    token, wrong = f"{marker}api", f"{marker}wrong"
    azurite.container(container_name).create_container()
    good_sas = azurite.container_sas(container_name, "cw")
    fields = dict(field.split("=", 1) for field in good_sas.split("&"))
    good_sig, raw_sig = unquote(fields["sig"]), fields["sig"]
    # Tried first and refused (a forged signature), so that a refusal's path is taken too.
    forged_sas = "&".join(f"{k}={marker + 'sas' if k == 'sig' else v}" for k, v in fields.items())
    account_key = f"{marker}key".encode().hex()
    settings = make_settings(
        tmp_path,
        azurite,
        container_name,
        api_token=token,
        azure_sas_token=forged_sas,
        azure_connection_string=(f"BlobEndpoint={azurite.url};SharedAccessSignature={good_sas}"),
        azure_account_key=account_key,
        azure_create_container=False,
    )
    proc = ServiceProcess(
        settings,
        tmp_path / "service.log",
        extra_env={
            "OTEL_SDK_DISABLED": "false",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_METRIC_EXPORT_INTERVAL": "300",
            # Every request header on the spans: the token must still not be there.
            "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST": ".*",
        },
    )
    proc.start()
    answers: list[httpx.Response] = []
    with proc.client as c, httpx.Client(base_url=str(c.base_url), timeout=10) as anonymous:
        for headers in ({}, {"Authorization": f"Bearer {wrong}"}):
            answers.append(anonymous.get("/v1/status", headers=headers))
            answers.append(anonymous.post("/v1/watch/start", headers=headers, json={}))
        assert all(r.status_code == 401 for r in answers)
        start = c.post("/v1/watch/start", json={"session_name": "secret"})
        date = start.json()["date_prefix"]
        admin = azurite.container(container_name)
        admin.upload_blob(f"{date}/secret/taken.bin", b"earlier")  # a conflict to resolve
        for name in ("a.bin", "taken.bin"):
            write_file(settings.nfs_incoming_dir / "secret" / name, name.encode())
        wait_for(
            lambda: (
                blob_bytes(admin, f"{date}/secret/a.bin")
                and blob_bytes(admin, f"{date}/secret/taken~2.bin")
            ),
            what="the uploads",
        )
        c.post("/v1/watch/stop")
        wait_for(lambda: c.get("/v1/sessions/secret").json()["drained"], what="drained")
        for path in (
            "/healthz",
            "/readyz",
            "/v1/status",
            "/v1/sessions",
            "/v1/sessions/secret",
            "/v1/files/failed",
            "/metrics",
            "/openapi.json",
        ):
            answers.append(c.get(path))
        wait_for(lambda: any(s.name == "file" for s in receiver.spans()), what="spans")
        wait_for(lambda: receiver.latest("files.processed"), what="metrics exported")
    assert proc.signal(signal.SIGTERM) == -signal.SIGTERM

    log = proc.log.read_text()
    assert "Connected to storage with connection-string credentials" in log
    assert "Storage refused the sas credentials" in log
    assert "APP_API_TOKEN is not set" not in log
    spans = receiver.spans()
    captured = [s.attributes for s in spans if "http.request.header.authorization" in s.attributes]
    assert captured, "request headers were not captured: the check below would prove nothing"
    headers = [str(a["http.request.header.authorization"]) for a in captured]
    assert all('"[REDACTED]"' in h for h in headers), headers

    texts = {
        "log": log,
        "answers": json.dumps(
            [[r.status_code, dict(r.headers), r.text] for r in answers], ensure_ascii=False
        ),
        "spans": "".join(repr(s) for s in spans),
        "otlp": repr(receiver.traces) + repr(receiver.metrics),
    }
    secrets = {
        "the API token": token,
        "a wrong token": wrong,
        "the marker": marker,
        "the SAS signature": good_sig,
        "the SAS signature, as sent": raw_sig,
        "the account key": account_key,
        "the development key": KEY[:20],
    }
    for where, text in texts.items():
        for what, secret in secrets.items():
            assert secret not in text, f"{what} appears in the {where}"


class MalformedStorage:
    """A storage endpoint on 127.0.0.1 that answers every request with a status line no HTTP
    client can parse (a broken proxy or gateway); with `probe_ok`, the start-up credential
    check (a HEAD of one blob that does not exist) gets Azure's 404 instead."""

    def __init__(self) -> None:
        self.probe_ok = False
        self.requests: list[str] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/devstoreaccount1"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with conn:
                head = conn.recv(65536).decode("latin-1")
                self.requests.append(head.split("\r\n", 1)[0])
                if self.probe_ok and head.startswith("HEAD ") and PROBE_BLOB in head:
                    conn.sendall(
                        b"HTTP/1.1 404 The specified blob does not exist.\r\n"
                        b"x-ms-error-code: BlobNotFound\r\nContent-Length: 0\r\n\r\n"
                    )
                else:
                    conn.sendall(b"HTTP/1.1 abc OK\r\n\r\n")

    def close(self) -> None:
        self._listener.close()


@pytest.mark.adversarial
def test_a_malformed_answer_from_the_storage_endpoint_never_shows_the_sas(
    tmp_path: Path, container_name: str, azurite: Azurite, receiver: OtlpReceiver
) -> None:
    """A malformed answer from whatever sits at the storage endpoint made aiohttp raise an error
    whose text carries the whole request URL, SAS signature included: copied into the start-up
    phase that unauthenticated `GET /readyz` returns, into WARNING lines, into
    `/v1/status.last_error` and into spans.

    Issue 21, finding 12.
    """
    marker = f"MARKER{uuid.uuid4().hex}"
    storage = MalformedStorage()
    settings = make_settings(
        tmp_path,
        azurite,
        container_name,
        azure_account_url=storage.url,
        azure_connection_string=None,
        azure_auth="sas",
        azure_sas_token=f"sv=2021-08-06&sp=rcw&se=2099-01-01T00%3A00%3A00Z&sig={marker}",
        azure_create_container=False,
        retry_max_s=1.0,
    )
    proc = ServiceProcess(
        settings,
        tmp_path / "service.log",
        extra_env=receiver.service_env(),
    )
    proc.start(wait_ready=False)
    answers: list[str] = []
    try:
        with proc.client as c:

            def phase() -> str | None:
                try:
                    detail = c.get("/readyz").json()["detail"] or ""
                except httpx.HTTPError:
                    return None
                return detail if "connect to storage:" in detail else None

            failed = wait_for(phase, timeout=60, what="a failed connection in /readyz")
            answers.append(str(failed))
            assert "400" in answers[-1]  # the malformed answer's own error, as it was
            storage.probe_ok = True
            wait_for(proc.ready, timeout=60, what="ready")
            c.post("/v1/watch/start", json={"session_name": "s"})
            write_file(settings.nfs_incoming_dir / "s" / "a.bin", b"data")
            status = wait_for(
                lambda: (s := c.get("/v1/status").json())["last_error"] and s,
                timeout=60,
                what="an upload failed",
            )
            answers += [json.dumps(status), c.get("/v1/sessions/s").text]
            wait_for(
                lambda: any(s.status_code == 2 for s in receiver.spans()), what="a failed span"
            )
    finally:
        if proc.proc is not None:
            proc.signal(signal.SIGTERM)
        storage.close()
    assert any(r.startswith("PUT ") for r in storage.requests), storage.requests
    texts = {
        "answers": "\n".join(answers),
        "log": proc.log.read_text(),
        "spans": "".join(repr(s) for s in receiver.spans()),
    }
    assert "Bad status line" in texts["log"]
    for where, text in texts.items():
        assert marker not in text, f"the SAS signature appears in the {where}"
