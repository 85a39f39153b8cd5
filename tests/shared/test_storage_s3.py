"""The storage suite, run against the local backend and against a real S3 HTTP server.

The S3 side is moto's standalone server (an S3-compatible endpoint at the edge of the
world, as MinIO is in production), started here on a loopback port and reached over
HTTP by boto3, exactly as a worker reaches MinIO.
"""

from __future__ import annotations

import dataclasses
import io
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
import requests

from shared import storage as storage_mod
from shared.settings import load_settings
from shared.storage import LocalStorage, S3Storage, job_key, open_storage
from tests.conftest import tiny_png, wait_for

JOB = "0123456789abcdef0123456789abcdef"
OTHER_JOB = "0123456789abcdef0123456789abcdee"
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "atelier-test",
    "AWS_SECRET_ACCESS_KEY": "atelier-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory) -> Iterator[str]:
    """moto's S3 server in its own process on a loopback port; credentials in the env."""
    saved = {key: os.environ.get(key) for key in S3_CREDENTIALS}
    os.environ.update(S3_CREDENTIALS)
    port = _free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(endpoint, timeout=1)
                break
            except requests.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto server did not start:\n{log_path.read_text()[-2000:]}")
                time.sleep(0.2)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _new_bucket(endpoint: str) -> str:
    bucket = f"atelier-{uuid.uuid4().hex[:12]}"
    storage_mod._s3_client(endpoint, "us-east-1").create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStorage(tmp_path / "storage")
    endpoint = request.getfixturevalue("s3_endpoint")
    return S3Storage(_new_bucket(endpoint), "atelier/test", endpoint_url=endpoint)


def _read(store, key: str) -> bytes:
    with store.open(key) as handle:
        return handle.read()


def test_bytes_round_trip_and_overwrite(store):
    key = job_key(JOB, "content.png")
    assert not store.exists(key)
    assert store.put_bytes(key, b"first") == 5
    assert store.exists(key) and _read(store, key) == b"first"
    assert store.put_bytes(key, b"second, longer") == 14
    assert _read(store, key) == b"second, longer"


def test_put_file_streams_a_large_file(store, tmp_path):
    source = tmp_path / "big.bin"
    data = os.urandom(9 * 1024 * 1024)  # above boto3's multipart threshold (8 MiB)
    source.write_bytes(data)
    key = job_key(JOB, "model.pt")
    assert store.put_file(key, source) == len(data)
    assert _read(store, key) == data


def test_missing_files_read_as_missing(store):
    key = job_key(JOB, "nothing.png")
    assert not store.exists(key)
    with pytest.raises(FileNotFoundError):
        store.open(key)


def test_delete_prefix_removes_one_job_and_nothing_else(store, monkeypatch):
    monkeypatch.setattr(storage_mod, "S3_DELETE_BATCH", 2)  # exercise several delete calls
    for name in ("a.png", "b.png", "c.png", "d.json", "e.jpg"):
        store.put_bytes(job_key(JOB, name), name.encode())
    store.put_bytes(job_key(OTHER_JOB, "a.png"), b"keep")
    store.put_bytes("jobs/0123", b"a sibling whose name starts like the prefix")
    store.delete_prefix(f"jobs/{JOB}")
    assert not any(store.exists(job_key(JOB, n)) for n in ("a.png", "c.png", "e.jpg"))
    assert _read(store, job_key(OTHER_JOB, "a.png")) == b"keep"
    store.delete_prefix("jobs/012")  # a partial name is no prefix of a folder
    assert store.exists("jobs/0123")
    store.delete_prefix(f"jobs/{JOB}")  # deleting nothing is fine


@pytest.mark.parametrize("key", ["../outside", "/etc/passwd", "jobs//x", "jobs/../../x"])
def test_keys_that_escape_are_refused(store, key):
    with pytest.raises(ValueError):
        store.put_bytes(key, b"x")


def test_download_url_serves_the_object_or_says_stream_it(store):
    key = job_key(JOB, "result.png")
    png = tiny_png()
    store.put_bytes(key, png)
    url = store.download_url(key, filename="result.png", content_type="image/png")
    if isinstance(store, LocalStorage):
        assert url is None
        return
    response = requests.get(url, timeout=10)
    assert response.status_code == 200 and response.content == png
    assert response.headers["Content-Type"] == "image/png"
    tampered = url.replace("result.png", "content.png")
    assert requests.get(tampered, timeout=10).status_code == 403
    assert response.headers["Content-Disposition"].startswith("inline")
    store.put_bytes(job_key(JOB, "metrics.json"), b"{}")
    url = store.download_url(
        job_key(JOB, "metrics.json"), filename="metrics.json", content_type="application/json"
    )
    served = requests.get(url, timeout=10)
    assert served.headers["Content-Disposition"] == 'attachment; filename="metrics.json"'


def test_prefixes_of_one_bucket_do_not_see_each_other(s3_endpoint):
    bucket = _new_bucket(s3_endpoint)
    one = S3Storage(bucket, "tenant-one", endpoint_url=s3_endpoint)
    two = S3Storage(bucket, "tenant-two/", endpoint_url=s3_endpoint)
    one.put_bytes(job_key(JOB, "a.png"), b"one")
    assert not two.exists(job_key(JOB, "a.png"))
    two.delete_prefix(f"jobs/{JOB}")
    assert one.exists(job_key(JOB, "a.png"))


def test_open_storage_reads_the_url_and_s3_settings(tmp_path, s3_endpoint, monkeypatch):
    monkeypatch.setenv("ATELIER_S3_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("ATELIER_S3_URL_EXPIRES", "60")
    monkeypatch.setenv("ATELIER_S3_DOWNLOADS", "proxy")
    settings = load_settings()
    s3 = open_storage("s3://my-bucket/some/prefix/", settings)
    assert isinstance(s3, S3Storage)
    assert (s3.bucket, s3.prefix, s3.url_expires, s3.presign) == (
        "my-bucket",
        "some/prefix",
        60,
        False,
    )
    assert s3.download_url("jobs/x", filename="x", content_type="image/png") is None
    assert isinstance(open_storage(f"file://{tmp_path}/s"), LocalStorage)
    for bad in ("s3://Bad_Bucket/x", "s3://", "gs://bucket/x", "/plain/path"):
        with pytest.raises(ValueError):
            open_storage(bad, settings)
    monkeypatch.setenv("ATELIER_S3_DOWNLOADS", "sometimes")
    with pytest.raises(ValueError, match="ATELIER_S3_DOWNLOADS"):
        load_settings()


# ---- the web API over each backend: submit writes inputs, downloads, delete removes


SQLITE_ONLY = pytest.mark.parametrize("fresh_db_url", ["sqlite"], indirect=True)  # storage ≠ DB


@pytest.fixture(params=["local", "s3-presigned", "s3-proxy"])
def api_settings(request, settings):
    if request.param == "local":
        return settings
    endpoint = request.getfixturevalue("s3_endpoint")
    return dataclasses.replace(
        settings,
        storage_url=f"s3://{_new_bucket(endpoint)}/atelier",
        s3_endpoint_url=endpoint,
        s3_downloads=request.param.removeprefix("s3-"),
    )


@SQLITE_ONLY
def test_api_submit_download_delete_on_each_backend(api_settings):
    from web import create_app

    client = create_app({"ATELIER_SETTINGS": api_settings, "TESTING": True}).test_client()
    content = tiny_png(40, 30)
    response = client.post(
        "/api/v1/jobs",
        data={
            "kind": "style_transfer",
            "content": (io.BytesIO(content), "c.png"),
            "style": (io.BytesIO(tiny_png(color=(0, 0, 200))), "s.png"),
        },
    )
    assert response.status_code == 202, response.json
    job = response.json
    url = job["inputs"][0]["url"]
    download = client.get(url)
    body = download.get_data()
    download.close()  # what a WSGI server does: closes the streamed file
    if api_settings.s3_downloads == "presigned" and api_settings.storage_url.startswith("s3"):
        assert download.status_code == 302
        assert download.headers["Cache-Control"] == "no-store"
        fetched = requests.get(download.headers["Location"], timeout=10)
        assert fetched.status_code == 200 and fetched.content == content
        assert fetched.headers["Content-Type"] == "image/png"
    else:
        assert download.status_code == 200 and body == content
        assert download.headers["Content-Type"] == "image/png"
    if api_settings.storage_url.startswith("file://"):
        assert download.content_length == len(content)
    assert client.get(url.replace("content.png", "nope.png")).status_code == 404

    assert client.post(job["urls"]["cancel"]).json["status"] == "canceled"
    assert client.delete(job["urls"]["self"]).status_code == 204
    store = open_storage(api_settings.storage_url, api_settings)
    assert not store.exists(job_key(job["id"], "content.png"))


@pytest.mark.slow
@SQLITE_ONLY
def test_a_real_worker_runs_a_job_on_s3_storage(settings, s3_endpoint, tmp_path):
    """Inputs, previews and results go through S3; the worker never touches a local path."""
    from tests.conftest import WorkerProcess
    from web import create_app

    s3 = dataclasses.replace(
        settings,
        storage_url=f"s3://{_new_bucket(s3_endpoint)}/e2e",
        s3_endpoint_url=s3_endpoint,
    )
    worker = WorkerProcess(s3, "s3-worker", tmp_path / "worker.log")
    try:
        worker.wait_ready(s3)
        client = create_app({"ATELIER_SETTINGS": s3, "TESTING": True}).test_client()
        response = client.post(
            "/api/v1/jobs",
            data={
                "kind": "style_transfer",
                "content": (io.BytesIO(tiny_png(48, 32)), "c.png"),
                "style": (io.BytesIO(tiny_png(color=(0, 0, 200))), "s.png"),
                "size": "48",
                "iterations": "4",
                "seed": "3",
            },
        )
        assert response.status_code == 202, response.json
        self_url = response.json["urls"]["self"]

        def finished():
            body = client.get(self_url).json
            return body if body["status"] in {"succeeded", "failed", "canceled"} else None

        done = wait_for(finished, timeout=120)
        assert done["status"] == "succeeded", (done["error"], worker.log_path.read_text()[-3000:])
        result = next(o for o in done["outputs"] if o["name"] == "result.png")
        location = client.get(result["url"]).headers["Location"]
        from PIL import Image

        image = Image.open(io.BytesIO(requests.get(location, timeout=10).content))
        assert image.size == (48, 32)
    finally:
        worker.stop()
