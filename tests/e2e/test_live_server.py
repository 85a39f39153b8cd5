"""The test server itself: a download the client resets still closes its file."""

from __future__ import annotations

import gc
import socket
import struct
import threading
import time

from flask import Flask, send_file
from werkzeug.serving import make_server

from tests.e2e.conftest import closing

BODY = 3000  # a small preview: the server has written it all before the client hangs up


def _get_then_reset(port: int) -> None:
    """Read the whole response, then hang up with a reset, as a browser dropping an
    image it no longer needs does; the server is then still draining the socket."""
    client = socket.create_connection(("127.0.0.1", port))
    client.sendall(b"GET /file HTTP/1.1\r\nHost: x\r\n\r\n")
    got = b""
    while len(got) < BODY:
        chunk = client.recv(65536)
        if not chunk:
            break
        got += chunk
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()


def test_a_reset_download_closes_its_file(tmp_path):
    path = tmp_path / "preview.bin"
    path.write_bytes(b"\0" * BODY)
    opened = []
    app = Flask(__name__)

    @app.get("/file")
    def download():
        opened.append(open(path, "rb"))  # noqa: SIM115  (send_file owns it)
        return send_file(opened[-1], mimetype="application/octet-stream")

    server = make_server("127.0.0.1", 0, closing(app), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        for _ in range(20):  # the bare server leaves about two in three of these open
            _get_then_reset(server.server_port)
        deadline = time.monotonic() + 10
        while any(not f.closed for f in opened) and time.monotonic() < deadline:
            time.sleep(0.05)
            gc.collect()
        assert len(opened) == 20
        assert all(f.closed for f in opened)
    finally:
        server.shutdown()
        thread.join(5)
