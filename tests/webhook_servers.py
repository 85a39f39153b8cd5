"""Webhook targets for the tests: a loopback server that records each request and then
answers at once or drips its answer, over HTTP or TLS, and the certificates TLS needs.

The receiver is the edge of the world, so it is a real socket server of our own; it
serves one connection at a time, which is all a delivery attempt needs.
"""

from __future__ import annotations

import datetime
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ANSWER = b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"


@dataclass(frozen=True)
class Request:
    line: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    received: float  # time.monotonic() once the whole request was read


def read_request(sock: socket.socket) -> Request:
    """One HTTP request: the head, then Content-Length bytes of body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the client closed before its headers ended")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    line, *lines = head.decode("latin-1").split("\r\n")
    headers = {
        name.strip().lower(): value.strip()
        for name, value in (entry.split(":", 1) for entry in lines)
    }
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return Request(line, headers, body, time.monotonic())


class HookServer:
    """A webhook target on 127.0.0.1: records requests (and TLS server names).

    ``answer``: the bytes sent back; ``drip_every``: send them one byte per that many
    seconds, for at most ``drip_for`` seconds (then hang up), as a slow or hostile target
    can.
    """

    def __init__(
        self,
        *,
        tls: ssl.SSLContext | None = None,
        answer: bytes = ANSWER,
        drip_every: float | None = None,
        drip_for: float = 30.0,
    ) -> None:
        self.requests: list[Request] = []
        self.server_names: list[str | None] = []
        self.errors: list[str] = []
        self._tls, self._answer = tls, answer
        self._drip_every, self._drip_for = drip_every, drip_for
        if tls is not None:
            tls.sni_callback = self._record_server_name
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name="hook-server", daemon=True)
        self._thread.start()

    def url(self, host: str = "127.0.0.1", path: str = "/hook") -> str:
        scheme = "https" if self._tls else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    def events(self) -> list[str]:
        return [r.headers.get("atelier-event", "") for r in self.requests]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._listener.close()

    def _record_server_name(self, _sslobj: object, name: str | None, _ctx: object) -> None:
        self.server_names.append(name)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            with conn:
                self._handle(conn)

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            stream = self._tls.wrap_socket(conn, server_side=True) if self._tls else conn
        except (OSError, ValueError) as exc:  # e.g. the client refused our certificate
            self.errors.append(f"handshake: {exc}")
            return
        try:
            self.requests.append(read_request(stream))
            if self._drip_every is None:
                stream.sendall(self._answer)
            else:
                self._drip(stream)
        except OSError as exc:  # the client went away: what a deadline does
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            if stream is not conn:
                stream.close()

    def _drip(self, stream: socket.socket) -> None:
        started = time.monotonic()
        for byte in self._answer:
            if self._stop.wait(self._drip_every) or time.monotonic() - started > self._drip_for:
                return
            stream.sendall(bytes([byte]))


def make_certificates(directory: Path, name: str) -> tuple[Path, ssl.SSLContext]:
    """A CA (its PEM path, for SSL_CERT_FILE) and a server context with a cert for ``name``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def certificate(subject: str, issuer: str, key, signer, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False
            ).add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key, server_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca_cert = certificate("atelier test CA", "atelier test CA", ca_key, ca_key, True)
    server_cert = certificate(name, "atelier test CA", server_key, ca_key, False)
    pem = serialization.Encoding.PEM
    ca_path, chain_path, key_path = (directory / f for f in ("ca.pem", "server.pem", "key.pem"))
    ca_path.write_bytes(ca_cert.public_bytes(pem))
    chain_path.write_bytes(server_cert.public_bytes(pem))
    key_path.write_bytes(
        server_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain_path, key_path)
    return ca_path, context


class Receiver:
    """Records deliveries; answers 500 to the first ``fail_first`` completed events."""

    def __init__(self, fail_first: int = 0) -> None:
        self.deliveries: list[dict] = []
        self.fail_first = fail_first
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                record = {"headers": dict(self.headers), "body": body}
                receiver.deliveries.append(record)
                failing = self.headers["Atelier-Event"] == "completed" and receiver.fail_first > 0
                if failing:
                    receiver.fail_first -= 1
                self.send_response(500 if failing else 204)
                self.end_headers()

            def log_message(self, *_args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[str]:
        return [d["headers"]["Atelier-Event"] for d in self.deliveries]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
