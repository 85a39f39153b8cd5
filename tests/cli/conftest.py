"""The CLI client against a live server and a real worker (the end-to-end fixtures, SQLite)."""

from __future__ import annotations

import pytest

from shared import migrate
from tests.conftest import make_settings
from tests.e2e.conftest import (  # noqa: F401  (fixtures, reused)
    e2e_redis_url,
    e2e_worker,
    live_server,
)


@pytest.fixture(scope="package")
def e2e_settings(tmp_path_factory, e2e_redis_url):  # noqa: F811
    redis_url = e2e_redis_url
    tmp = tmp_path_factory.mktemp("cli")
    # few stream slots, so the test that fills them (polling fallback) stays cheap
    settings = make_settings(tmp, f"sqlite:///{tmp}/atelier.db", redis_url, max_streams=2)
    migrate.upgrade(settings.database_url)
    return settings


@pytest.fixture
def atelier(monkeypatch, capsys):
    """Run ``atelier ARGS…`` in-process through the real parser; returns (rc, stdout, stderr)."""
    from worker.cli import build_parser

    monkeypatch.delenv("ATELIER_TOKEN", raising=False)

    def run(*argv: str, url: str | None = None) -> tuple[int, str, str]:
        if url:
            monkeypatch.setenv("ATELIER_URL", url)
        args = build_parser().parse_args([str(a) for a in argv])
        rc = args.func(args)
        out = capsys.readouterr()
        return rc, out.out, out.err

    return run
