"""Engine and session factory shared by web, worker and CLI."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Select, create_engine, event, exc
from sqlalchemy.orm import Session, sessionmaker


def _prepare_sqlite(url: str) -> dict:
    """Create the file's folder and let web and worker processes share the file."""
    path = url.split("sqlite:///", 1)[-1]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    return {"timeout": 30, "check_same_thread": False}


_engines: dict[str, Engine] = {}
_read_engines: dict[str, Engine] = {}
_sessionmakers: dict[str, sessionmaker[Session]] = {}
_lock = threading.Lock()


def get_engine(url: str) -> Engine:
    """One engine per URL per process, kept until :func:`forget_engine`.

    Not an LRU cache: an engine pushed out of one would be garbage-collected with its
    pooled connections still open.
    """
    with _lock:
        if url not in _engines:
            _engines[url] = _make_engine(url)
        return _engines[url]


def forget_engine(url: str) -> None:
    """Close ``url``'s pooled connections and drop its engine (before dropping a database)."""
    with _lock:
        engines = [_engines.pop(url, None), _read_engines.pop(url, None)]
        _sessionmakers.pop(url, None)
    for engine in engines:
        if engine is not None:
            engine.dispose()


def get_read_engine(url: str) -> Engine:
    """The engine for reads of one statement outside any transaction (a job page's poll).

    On PostgreSQL its own small pool, whose connections are in autocommit from the
    start: psycopg then sends no BEGIN, nothing needs switching per read, and the pool
    need not roll a connection back when it returns (it never holds a transaction):
    three steps of psycopg's per read fewer. On SQLite a read outside a transaction
    needs nothing of the kind: it is :func:`get_engine`'s.
    """
    if not url.startswith("postgresql"):
        return get_engine(url)
    with _lock:
        if url not in _read_engines:
            engine = create_engine(
                url,
                isolation_level="AUTOCOMMIT",
                pool_reset_on_return=None,
                pool_size=5,
                max_overflow=10,
                pool_use_lifo=True,
            )
            _ping_idle_connections(engine)
            _read_engines[url] = engine
        return _read_engines[url]


@contextmanager
def pooled_driver(url: str) -> Iterator[tuple[Any, Any]]:
    """A pooled connection of :func:`get_read_engine` as (the pool's proxy, the dialect),
    for a read on the driver's own cursor outside any transaction.

    No SQLAlchemy ``Connection`` is built: on the hottest reads (every poll of a job page,
    every token check) its construction, isolation handling and close cost about as much
    CPU as the query. The pool still hands the connection out, pings it and takes it back;
    a driver error (no database, a lost connection) is raised as SQLAlchemy's, as through
    a ``Connection``, and a lost connection leaves the pool.
    """
    engine = get_read_engine(url)
    dialect = engine.dialect
    pooled = None
    try:
        pooled = engine.raw_connection()
        yield pooled, dialect
    except dialect.loaded_dbapi.Error as error:
        if pooled is not None and dialect.is_disconnect(error, pooled.dbapi_connection, None):
            pooled.invalidate(error)
        raise exc.DBAPIError.instance(
            None, None, error, dialect.loaded_dbapi.Error, dialect=dialect
        ) from error
    finally:
        if pooled is not None:
            pooled.close()


def read_first(url: str, statement: Select[Any], params: dict[str, Any]) -> tuple | None:
    """The first row of a Core ``statement`` read through :func:`pooled_driver`, each value
    decoded by its column type's own result processor (times made aware, JSON parsed), as
    SQLAlchemy's result would. ``params`` go to the driver as they are: plain strings and
    numbers, nothing a type must convert first."""
    with pooled_driver(url) as (pooled, dialect):
        sql, order, fixed, decoders = _compiled(statement, dialect)
        values = {**fixed, **params}
        arguments: Any = [values[name] for name in order] if order is not None else values
        cursor = pooled.driver_connection.cursor()
        try:
            cursor.execute(sql, arguments)
            row = cursor.fetchone()
        finally:
            cursor.close()
    if row is None:
        return None
    decoded = list(row)
    for i, process in decoders:
        if decoded[i] is not None:  # every processor leaves None as it is
            decoded[i] = process(decoded[i])
    return tuple(decoded)


@lru_cache(maxsize=32)
def _compiled(statement: Select[Any], dialect: Any) -> tuple[str, Any, dict, tuple]:
    """``statement`` as the driver's SQL text, its parameter order (None: by name), its
    fixed parameters and (column index, result processor) for the columns that have one."""
    compiled = statement.compile(dialect=dialect)
    order = tuple(compiled.positiontup) if compiled.positional else None
    fixed = {k: v for k, v in compiled.params.items() if v is not None}
    found = (
        (i, column.type.dialect_impl(dialect).result_processor(dialect, None))
        for i, column in enumerate(statement.selected_columns)
    )
    return str(compiled), order, fixed, tuple((i, p) for i, p in found if p is not None)


def _make_engine(url: str) -> Engine:
    """SQLite gets WAL so readers never block the worker."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args=_prepare_sqlite(url))

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # pragma: no cover - trivial
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    # LIFO: the connection used last goes out first, so a steady poll reuses a warm one
    # (no ping) and the idle rest can age out
    engine = create_engine(url, pool_size=10, max_overflow=20, pool_use_lifo=True)
    _ping_idle_connections(engine)
    return engine


# A pooled connection unused for this long is pinged before it is handed out.
PING_AFTER_IDLE_SECONDS = 2.0


def _ping_idle_connections(engine: Engine) -> None:
    """``pool_pre_ping``, but only for connections that sat idle.

    Pinging on every checkout cost a round trip per request (a job page's poll is one
    query). A connection used moments ago is alive or already known dead: a failed
    statement invalidates the whole pool (SQLAlchemy does that on any disconnect), so
    after a database restart every old connection is replaced either way. An idle one
    is pinged, and a failed ping makes the pool retry with a fresh connection.
    """

    @event.listens_for(engine, "checkin")
    def _stamp(_dbapi_conn, record) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_conn, record, _proxy) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is not None and time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_conn)
        except Exception as error:
            raise exc.DisconnectionError(str(error)) from error
        if alive is False:
            raise exc.DisconnectionError("ping failed")


def get_sessionmaker(url: str) -> sessionmaker[Session]:
    engine = get_engine(url)
    with _lock:
        if url not in _sessionmakers:
            _sessionmakers[url] = sessionmaker(bind=engine, expire_on_commit=False)
        return _sessionmakers[url]


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = get_sessionmaker(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
