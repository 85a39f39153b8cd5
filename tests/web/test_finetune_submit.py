"""Bad fine_tune / predict submits: 4xx naming the field, and no row, message or file left."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from shared.db import session_scope
from shared.jobs import add_job, new_job_id
from shared.models import Job
from tests.conftest import tiny_png
from tests.finetune_data import make_tar, make_zip, shape_files

GOOD = shape_files(6)


def _symlink_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in GOOD.items():
            archive.writestr(name, data)
        link = zipfile.ZipInfo("discs/link.png")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    return buffer.getvalue()


ATTACKS = [
    # (archive bytes, status, words in the message)
    (make_zip({**GOOD, "../../escape.png": tiny_png()}), 400, "outside the archive"),
    (make_tar({**GOOD, "/etc/cron.d/x.png": tiny_png()}), 400, "absolute path"),
    (_symlink_zip(), 400, "symbolic link"),
    (make_zip({**GOOD, "discs/bomb.png": bytes(30 * 1024 * 1024)}), 413, "bomb"),
    (make_zip({k: v for k, v in GOOD.items() if k.startswith("discs/")}), 400, "2 classes"),
    (make_zip({"discs/a.txt": b"x", "squares/b.txt": b"y"}), 400, "no images"),
    (make_zip(GOOD)[:300], 400, "corrupt"),
    (b"%PDF-1.4 definitely not an archive", 415, "archive"),
]


def _nothing_left(settings, before: int) -> None:
    with session_scope(settings.database_url) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0
    assert redis.Redis.from_url(settings.redis_url).llen("gpu") == before
    storage = Path(settings.storage_url.removeprefix("file://"))
    assert not storage.exists() or not any(storage.rglob("*.*"))


@pytest.mark.parametrize(("archive", "status", "words"), ATTACKS)
def test_bad_dataset_is_refused_at_submit(client, settings, archive, status, words):
    before = redis.Redis.from_url(settings.redis_url).llen("gpu")
    response = client.post(
        "/api/v1/jobs",
        data={"kind": "fine_tune", "dataset": (io.BytesIO(archive), "data.zip")},
        content_type="multipart/form-data",
    )
    assert response.status_code == status, response.get_json()
    error = response.get_json()["error"]
    assert error["field"] == "dataset" and words in error["message"]
    _nothing_left(settings, before)


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"epochs": "0"}, "epochs"),
        ({"backbone": "alexnet"}, "backbone"),
        ({"strategy": "magic"}, "strategy"),
        ({"val_split": "0.9"}, "val_split"),
        ({"image_size": "4096"}, "image_size"),
        ({"lr": "nan"}, "lr"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_fine_tune_fields(client, settings, form, field):
    before = redis.Redis.from_url(settings.redis_url).llen("gpu")
    response = client.post(
        "/api/v1/jobs",
        data={"kind": "fine_tune", **form, "dataset": (io.BytesIO(make_zip(GOOD)), "d.zip")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 400 and response.get_json()["error"]["field"] == field
    _nothing_left(settings, before)


def _predict(client, model: str):
    return client.post(
        "/api/v1/jobs",
        data={"kind": "predict", "model": model, "image": (io.BytesIO(tiny_png()), "a.png")},
        content_type="multipart/form-data",
    )


def test_predict_needs_a_succeeded_fine_tune_of_the_same_owner(client, settings):
    ids = {}
    with session_scope(settings.database_url) as session:
        for key, kind, owner, status in [
            ("style", "style_transfer", "local", "succeeded"),
            ("running", "fine_tune", "local", "processing"),
            ("other", "fine_tune", "someone-else", "succeeded"),
        ]:
            ids[key] = new_job_id()
            job = add_job(session, job_id=ids[key], kind=kind, owner=owner, params={}, files=[])
            job.status = status
    cases = [
        (new_job_id(), 400, "no fine_tune job"),
        ("not-an-id", 400, "32 hex"),
        (ids["style"], 400, "no fine_tune job"),
        (ids["other"], 400, "no fine_tune job"),  # someone else's job does not exist for us
        (ids["running"], 409, "not succeeded"),
    ]
    for model, status, words in cases:
        response = _predict(client, model)
        assert response.status_code == status, (model, response.get_json())
        error = response.get_json()["error"]
        assert error["field"] == "model" and words in error["message"]
    with session_scope(settings.database_url) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 3
