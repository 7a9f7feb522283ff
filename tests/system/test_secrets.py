"""No secret appears in a log line, an answer, a span or a metric."""

import json
import signal
import uuid
from pathlib import Path
from urllib.parse import unquote

import httpx

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
