"""Files outlive their rows (a submit killed between its writes and its commit, a delete
killed between the row and the files): the dispatcher's sweep removes storage prefixes
that have no row once they are older than the grace period; on local disk and S3."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from sqlalchemy import event, func, select

from shared.db import get_engine, session_scope
from shared.housekeeping import sweep_orphan_files
from shared.jobs import StoredFile, add_job, new_job_id
from shared.models import Job
from shared.storage import LocalStorage, job_key, open_storage
from tests.conftest import ROOT, settings_env, wait_for, writes_blocked
from tests.shared.test_storage_s3 import _new_bucket, s3_endpoint  # noqa: F401
from worker.dispatcher import run_forever, sweep_orphans

HOUR = 3600


@pytest.fixture(params=["local", "s3"])
def store_settings(request, settings):
    """The test's settings on local storage or on a bucket of moto's S3 server."""
    if request.param == "local":
        return settings
    endpoint = request.getfixturevalue("s3_endpoint")
    return dataclasses.replace(
        settings, storage_url=f"s3://{_new_bucket(endpoint)}/atelier", s3_endpoint_url=endpoint
    )


def _storage(settings):
    return open_storage(settings.storage_url, settings)


def _files(settings, job_id: str, *names: str) -> None:
    for name in names:
        _storage(settings).put_bytes(job_key(job_id, name), name.encode())


def _job_with_files(settings, *names: str) -> str:
    """A job row and its files, the way a finished submit leaves them."""
    job_id = new_job_id()
    _files(settings, job_id, *names)
    with session_scope(settings.database_url) as session:
        stored = [StoredFile("input", n, "image/png", len(n)) for n in names]
        add_job(
            session, job_id=job_id, kind="style_transfer", owner="local", params={}, files=stored
        )
    return job_id


def _prefixes(settings) -> set[str]:
    return {job_id for page in _storage(settings).job_prefixes() for job_id, _ in page}


CHILD = """
from shared.settings import load_settings
from tests.conftest import style_form
from web import create_app

client = create_app({"ATELIER_SETTINGS": load_settings()}).test_client()
client.post("/api/v1/jobs", data=style_form(), content_type="multipart/form-data")
"""


def _submit_killed_before_commit(settings) -> str:
    """Run a real submit in a child process and SIGKILL it once its input files are
    stored but before its row can commit; returns the job id its files are under.

    Meanwhile the child waits for the database (on SQLite up to its 30 s busy timeout)."""
    before = _prefixes(settings)
    env = {**os.environ, **settings_env(settings), "PYTHONPATH": str(ROOT)}
    with writes_blocked(settings.database_url):
        child = subprocess.Popen([sys.executable, "-c", CHILD], env=env, cwd=ROOT)
        try:
            job_id = wait_for(lambda: next(iter(_prefixes(settings) - before), None), timeout=60)
            storage = _storage(settings)
            wait_for(lambda: storage.exists(job_key(job_id, "style-1.png")), timeout=60)
            assert child.poll() is None, "the submit ended although it could not commit"
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(30)
    return job_id


def test_a_submit_killed_between_files_and_row_leaves_files_the_sweep_removes(
    store_settings,
):
    settings = store_settings
    kept = _job_with_files(settings, "content.png", "result.png")

    orphan = _submit_killed_before_commit(settings)

    with session_scope(settings.database_url) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1  # only `kept`
    assert _prefixes(settings) == {kept, orphan}
    assert sweep_orphans(dataclasses.replace(settings, orphan_grace_seconds=HOUR)) == 0
    assert _prefixes(settings) == {kept, orphan}  # young: perhaps a submit still running

    assert sweep_orphans(dataclasses.replace(settings, orphan_grace_seconds=0)) == 1
    assert _prefixes(settings) == {kept}
    assert not _storage(settings).exists(job_key(orphan, "content.png"))
    assert _storage(settings).exists(job_key(kept, "content.png"))
    assert _storage(settings).exists(job_key(kept, "result.png"))


def test_the_sweep_pages_through_storage_and_spares_rows_and_strangers(store_settings):
    """Seven prefixes in pages of two: four queries, five orphans gone, nothing else."""
    settings = store_settings
    known = {_job_with_files(settings, "result.png") for _ in range(2)}
    orphans = {new_job_id() for _ in range(5)}
    for job_id in orphans:
        _files(settings, job_id, "a.png", "b.png")
    storage = _storage(settings)
    storage.put_bytes("jobs/0123", b"not a job folder")
    storage.put_bytes("elsewhere/x", b"not under jobs/")
    queries: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:
        if "FROM jobs" in statement:
            queries.append(statement)

    engine = get_engine(settings.database_url)
    event.listen(engine, "before_cursor_execute", count)
    try:
        young = sweep_orphan_files(settings.database_url, storage, grace_seconds=HOUR, page_size=2)
        assert young == [] and _prefixes(settings) == known | orphans
        removed = sweep_orphan_files(
            settings.database_url,
            storage,
            grace_seconds=HOUR,
            page_size=2,
            now=time.time() + 2 * HOUR,
        )
    finally:
        event.remove(engine, "before_cursor_execute", count)

    assert set(removed) == orphans
    assert len(queries) == 4  # one per page of two, for the second sweep only
    assert _prefixes(settings) == known
    assert storage.exists("jobs/0123") and storage.exists("elsewhere/x")


def test_a_prefix_is_as_young_as_its_newest_file(settings):
    storage = LocalStorage(settings.storage_url.removeprefix("file://"))
    job_id = new_job_id()
    _files(settings, job_id, "old.png", "new.png")
    old = time.time() - 2 * HOUR
    os.utime(storage.local_path(job_key(job_id, "old.png")), (old, old))
    os.utime(storage.local_path(f"jobs/{job_id}"), (old, old))

    assert sweep_orphan_files(settings.database_url, storage, grace_seconds=HOUR) == []
    os.utime(storage.local_path(job_key(job_id, "new.png")), (old, old))
    assert sweep_orphan_files(settings.database_url, storage, grace_seconds=HOUR) == [job_id]


def test_the_dispatcher_loop_runs_the_sweep(settings):
    orphan = new_job_id()
    _files(settings, orphan, "result.png")
    kept = _job_with_files(settings, "result.png")
    stop = threading.Event()
    loop = threading.Thread(
        target=run_forever,
        args=(dataclasses.replace(settings, orphan_grace_seconds=0), stop, 0.1),
        daemon=True,
    )
    loop.start()
    try:
        wait_for(lambda: _prefixes(settings) == {kept}, timeout=30)
    finally:
        stop.set()
        loop.join(30)
