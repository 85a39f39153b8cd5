"""One SQLAlchemy session per request, closed at teardown."""

from __future__ import annotations

from flask import Flask, current_app, g
from sqlalchemy.orm import Session

from shared.db import get_sessionmaker
from shared.settings import Settings


def settings() -> Settings:
    return current_app.config["ATELIER"]


def session() -> Session:
    if "db_session" not in g:
        g.db_session = get_sessionmaker(settings().database_url)()
    return g.db_session


def _close(_exc: BaseException | None) -> None:
    db_session = g.pop("db_session", None)
    if db_session is not None:
        db_session.close()


def init_app(app: Flask) -> None:
    app.teardown_appcontext(_close)
