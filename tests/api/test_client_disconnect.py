"""A client that disconnects mid-upload is no server error (issue [reliability-3] N5): logged at info
without a traceback, and counted in /metrics as 499 (nginx's "client closed request"), not 500."""

from __future__ import annotations

import logging
import re
import socket
import time

from tests.support.api_client import OPERATOR
from tests.support.jobs import wait_for


def uploads_answered(client, status: str) -> int:
    text = client.get("/metrics", headers=OPERATOR).text
    line = f'dora_http_requests_total{{method="POST",route="/v1/files",status="{status}"}} '
    found = re.search("^" + re.escape(line) + r"(\S+)$", text, re.MULTILINE)
    return int(float(found.group(1))) if found else 0


def test_a_client_that_disconnects_mid_upload_is_a_499_logged_at_info(client, tenant, server_url, caplog):
    caplog.set_level(logging.INFO, logger="api.errors")
    before_499, before_500 = uploads_answered(client, "499"), uploads_answered(client, "500")
    host, port = server_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall((f"POST /v1/files HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {tenant.key}\r\n"
                      "Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: 100000\r\n\r\n"
                      '--xyz\r\nContent-Disposition: form-data; name="file"; filename="d.jsonl"\r\n\r\n'
                      '{"messages": [').encode())
        time.sleep(0.3)  # the upload is streaming its body into the route
    wait_for(lambda: uploads_answered(client, "499") == before_499 + 1, timeout=10,
             what="the abandoned upload to be counted as 499")
    assert uploads_answered(client, "500") == before_500
    assert "client disconnected during POST /v1/files" in caplog.text
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info] == []
    assert tenant.counts()[0] == 0  # nothing of it was kept
