"""One database, one real Celery worker and one live HTTP server per backend for this package."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

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
    settings = make_settings(tmp, url, redis_url)
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


@pytest.fixture(scope="package")
def live_server(e2e_settings) -> Iterator[str]:
    """The real app on a real socket, so requests go through HTTP, not a test client."""
    from web import create_app

    app = create_app({"ATELIER_SETTINGS": e2e_settings})
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(5)
