"""Webhook receivers for the tests: a real HTTP server on loopback, in a thread, that records what it got."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from standardwebhooks import Webhook as Verifier

from store.settings import Settings
from tests.support.jobs import wait_for


@dataclass
class Received:
    at: float  # time.monotonic() when it arrived
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict:
        return json.loads(self.body)

    def verify(self, secret: str) -> dict:
        """The event, once the signature verifies with the Standard Webhooks reference library."""
        return Verifier(secret).verify(self.body, self.headers)


@dataclass
class Receiver:
    """Answers each POST with the next of `answers` (then 200), after `delay` seconds; records them.
    With `tls` (a certificate and key file), it is an https:// receiver."""

    answers: list[int] = field(default_factory=list)
    delay: float = 0.0
    location: str = "http://127.0.0.1:9/elsewhere"  # where a 3xx answer points
    received: list[Received] = field(default_factory=list)
    url: str = ""
    tls: tuple[Path, Path] | None = None

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.received.append(Received(at=time.monotonic(), path=self.path,
                                                  headers={k.lower(): v for k, v in self.headers.items()}, body=body))
                time.sleep(receiver.delay)
                status = receiver.answers.pop(0) if receiver.answers else 200
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        scheme = "https" if self.tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}/hooks/dora"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait(self, count: int, *, timeout: float = 20, drive: Callable[[], object] | None = None) -> list[Received]:
        """Wait until `count` requests arrived (calling `drive` between looks), and return them."""
        def enough():
            if drive is not None:
                drive()
            return len(self.received) >= count
        wait_for(enough, timeout=timeout, what=f"{count} webhook requests at {self.url} (got {len(self.received)})",
                 interval=0.05)
        return self.received


def send_due(settings: Settings) -> list[str]:
    """One pass of what `dora webhooks` does, in this process: the sweeper publishes each due
    delivery straight to the delivery task (no broker). Returns the deliveries it attempted."""
    from worker.webhooks import Sweeper, deliver

    attempted = []
    Sweeper(settings, publish=lambda delivery_id: attempted.append(delivery_id) or
            deliver(delivery_id, settings) is not None or True, queued=lambda: 0).run_once()  # nothing is queued
    return attempted


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for the address 127.0.0.1 (subjectAltName IP), signed by its own key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dora-test-receiver")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "receiver.pem", folder / "receiver.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file
