"""One database, one real Celery worker and one live HTTP server per backend for this package."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable, Iterator

import pytest
from werkzeug.serving import make_server

from shared import migrate
from tests.conftest import (
    BACKENDS,
    WorkerProcess,
    _create_pg_database,
    _drop_pg_database,
    make_settings,
    pg_available,
    redis_database,
)


@pytest.fixture(scope="package")
def e2e_redis_url(redis_server) -> Iterator[str]:
    with redis_database(redis_server) as url:
        yield url


@pytest.fixture(scope="package", params=BACKENDS)
def e2e_settings(request, tmp_path_factory, e2e_redis_url):
    redis_url = e2e_redis_url
    tmp = tmp_path_factory.mktemp(f"e2e-{request.param}")
    name = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp}/atelier.db"
    else:
        if not pg_available():
            pytest.skip("PostgreSQL is not answering on 127.0.0.1:5432")
        name, url = _create_pg_database()
    # few stream slots, so the tests that fill them (503 busy, polling fallback) stay cheap
    settings = make_settings(tmp, url, redis_url, max_streams=2)
    migrate.upgrade(url)
    yield settings
    if name:
        _drop_pg_database(name, url)


@pytest.fixture(scope="package")
def e2e_worker(e2e_settings) -> Iterator[WorkerProcess]:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    worker = WorkerProcess(e2e_settings, name, e2e_settings.var_dir / f"{name}.log")
    try:
        worker.wait_ready(e2e_settings)
        yield worker
    finally:
        worker.stop()


class _ClosedWhenDropped:
    """A response body that is closed even when the test server forgets to.

    Werkzeug's development server skips the WSGI ``close()`` when the client resets the
    connection while the server drains it after the last write (a browser dropping a
    preview it no longer needs): the read raises before ``close()`` is reached, the
    streamed file is left to the garbage collector, and its ResourceWarning fails the
    test (tests/e2e/test_live_server.py reproduces it).  gunicorn, which serves Atelier
    everywhere else, always calls ``close()``.
    """

    def __init__(self, body: Iterable[bytes]) -> None:
        self._body = body
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        if self._closed:  # Flask's teardown callbacks must run once
            return
        self._closed = True
        close = getattr(self._body, "close", None)
        if close is not None:
            close()

    def __del__(self) -> None:
        self.close()


def closing(app):
    """``app`` with every response body wrapped in :class:`_ClosedWhenDropped`."""

    def serve(environ, start_response):
        return _ClosedWhenDropped(app(environ, start_response))

    return serve


@pytest.fixture(scope="package")
def live_server(e2e_settings) -> Iterator[str]:
    """The real app on a real socket, so requests go through HTTP, not a test client."""
    from web import create_app

    app = create_app({"ATELIER_SETTINGS": e2e_settings})
    server = make_server("127.0.0.1", 0, closing(app), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(5)
