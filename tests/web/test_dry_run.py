"""``POST /api/v1/jobs?dry_run=true``: the submit's checks and an estimate, nothing stored."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from shared import migrate
from shared.db import session_scope
from shared.models import Job
from tests.conftest import make_settings, style_form, tiny_png
from tests.finetune_data import make_zip, shape_files
from tests.web.helpers import as_json, make_job
from web import dry_run

DRY = "/api/v1/jobs?dry_run=true"


@pytest.fixture(autouse=True)
def _fresh_model():
    dry_run.reset_model()  # the fit is per process; each test has its own database
    yield
    dry_run.reset_model()


def _queued_messages(settings) -> int:
    client = redis.Redis.from_url(settings.redis_url)
    return sum(client.llen(name) for name in ("gpu", "cpu"))


def _assert_nothing_stored(settings, messages_before: int) -> None:
    with session_scope(settings.database_url) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0
    assert _queued_messages(settings) == messages_before
    storage = Path(settings.storage_url.removeprefix("file://"))
    assert not storage.exists() or not any(p.is_file() for p in storage.rglob("*"))


def test_a_valid_style_body_is_estimated_and_nothing_is_stored(client, settings):
    before = _queued_messages(settings)
    form = style_form(tiny_png(96, 64), size="64", iterations="12")
    response = client.post(DRY, data=form, content_type="multipart/form-data")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["valid"] is True and body["kind"] == "style_transfer"
    assert body["params"]["size"] == 64 and body["params"]["iterations"] == 12
    assert set(body["estimate"]) == {"cpu", "cuda"}
    for device in ("cpu", "cuda"):
        assert body["estimate"][device]["seconds"] > 0
        assert body["estimate"][device]["peak_bytes"] > 0
    # fp32 on the CPU keeps twice the activations of bf16 on a GPU
    assert body["estimate"]["cpu"]["peak_bytes"] > body["estimate"]["cuda"]["peak_bytes"]
    assert body["queue_position"] == 1
    assert body["runnable"] is False and body["workers"]["connected"] == 0
    assert body["basis"]["work_unit"] == "pixel-steps" and body["basis"]["finished_jobs"] == 0
    assert "Location" not in response.headers
    _assert_nothing_stored(settings, before)


def test_more_work_is_predicted_to_take_longer(client):
    def seconds(**fields) -> float:
        form = style_form(tiny_png(96, 64), **fields)
        response = client.post(DRY, data=form, content_type="multipart/form-data")
        return response.get_json()["estimate"]["cpu"]["seconds"]

    assert seconds(size="512", iterations="40") > seconds(size="128", iterations="40")
    assert seconds(size="256", iterations="80") > seconds(size="256", iterations="20")


@pytest.mark.parametrize(
    ("fields", "status", "field"),
    [
        ({"size": "999999"}, 400, "size"),
        ({"preset": "instant"}, 400, "preset"),
        ({"kind": "alchemy"}, 400, "kind"),
        ({"webhook_events": "start"}, 400, "webhook_events"),
    ],
)
def test_an_invalid_body_gets_the_submits_own_answer_and_nothing_is_stored(
    client, settings, fields, status, field
):
    before = _queued_messages(settings)
    dry = client.post(DRY, data=style_form(**fields), content_type="multipart/form-data")
    real = client.post(
        "/api/v1/jobs", data=style_form(**fields), content_type="multipart/form-data"
    )
    assert dry.status_code == real.status_code == status
    assert dry.get_json() == real.get_json()
    assert dry.get_json()["error"]["field"] == field
    _assert_nothing_stored(settings, before)


def test_an_unreadable_image_is_refused_like_a_submit(client, settings):
    before = _queued_messages(settings)
    form = style_form(b"not an image at all")
    response = client.post(DRY, data=form, content_type="multipart/form-data")
    assert response.status_code == 415 and response.get_json()["error"]["field"] == "content"
    _assert_nothing_stored(settings, before)


@pytest.mark.parametrize("value", ["yes", "1", "", "TRUE"])
def test_dry_run_takes_only_true_or_false(client, settings, value):
    before = _queued_messages(settings)
    response = client.post(
        f"/api/v1/jobs?dry_run={value}", data=style_form(), content_type="multipart/form-data"
    )
    assert response.status_code == 400 and response.get_json()["error"]["field"] == "dry_run"
    _assert_nothing_stored(settings, before)


def test_dry_run_false_is_a_real_submit(client, settings):
    response = client.post(
        "/api/v1/jobs?dry_run=false", data=style_form(), content_type="multipart/form-data"
    )
    assert response.status_code == 202
    with session_scope(settings.database_url) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1


def test_a_fine_tune_body_counts_its_images(client, settings):
    before = _queued_messages(settings)
    data = {"kind": "fine_tune", "epochs": "2", "strategy": "full", "image_size": "112"}
    data["dataset"] = (io.BytesIO(make_zip(shape_files(6))), "d.zip")
    response = client.post(DRY, data=data, content_type="multipart/form-data")
    assert response.status_code == 200, response.get_json()
    basis = response.get_json()["basis"]
    # 12 images, (112/224)² of a reference image each, through the backbone twice
    assert basis["work_unit"] == "image-passes" and basis["work"] == pytest.approx(6.0)
    _assert_nothing_stored(settings, before)


def test_queue_position_counts_the_jobs_queued_on_its_queue(client, settings):
    for _ in range(2):
        make_job(settings, status="queued")
    make_job(settings, status="succeeded")
    response = client.post(DRY, data=style_form(), content_type="multipart/form-data")
    assert response.get_json()["queue_position"] == 3


def _finished_style_job(settings, pixels_side: int, steps: int, seconds: float) -> None:
    scales = [{"size": [pixels_side, pixels_side], "steps": steps, "seconds": seconds}]
    make_job(
        settings,
        files={"metrics.json": ("output", as_json({"scales": scales, "device": "cpu"}))},
        metrics={"device": "cpu", "run_seconds": seconds},
    )


def test_the_estimate_is_refit_from_finished_jobs(client, settings):
    # exactly seconds = 2e-4 × pixel-steps^0.9 (a power law: shared/estimates.py)
    for side, steps in [(100, 10), (100, 30), (200, 10), (200, 20), (300, 5)]:
        _finished_style_job(settings, side, steps, 2e-4 * (side * side * steps) ** 0.9)
    form = style_form(tiny_png(64, 64), size="64", iterations="10", multiscale="false")
    body = client.post(DRY, data=form, content_type="multipart/form-data").get_json()
    assert body["basis"]["finished_jobs"] == 5
    assert body["estimate"]["cpu"]["fit_on_jobs"] == 5
    assert body["estimate"]["cuda"]["fit_on_jobs"] == 0  # no CUDA job finished: the default
    assert body["estimate"]["cpu"]["seconds"] == pytest.approx(
        2e-4 * (64 * 64 * 10) ** 0.9, rel=0.01
    )


def test_a_dry_run_counts_against_neither_the_rate_limit_nor_the_quota(
    tmp_path, fresh_db_url, redis_url
):
    from web import create_app

    settings = make_settings(
        tmp_path, fresh_db_url, redis_url, submit_rate_per_minute=1, max_active_per_owner=1
    )
    migrate.upgrade(settings.database_url)
    client = create_app({"ATELIER_SETTINGS": settings, "TESTING": True}).test_client()
    for _ in range(3):
        response = client.post(DRY, data=style_form(), content_type="multipart/form-data")
        assert response.status_code == 200
    first = client.post("/api/v1/jobs", data=style_form(), content_type="multipart/form-data")
    assert first.status_code == 202
    again = client.post(DRY, data=style_form(), content_type="multipart/form-data")
    assert again.status_code == 200 and again.get_json()["queue_position"] == 2


def test_the_form_has_a_hidden_estimate_that_its_script_fills(client):
    page = client.get("/").get_data(as_text=True)
    assert 'data-dry-run="/api/v1/jobs?dry_run=true"' in page
    assert '<p class="estimate muted" data-estimate aria-live="polite" hidden></p>' in page


def test_the_form_post_is_never_a_dry_run(client, settings):
    from tests.web.helpers import csrf_token

    form = {**style_form(), "csrf_token": csrf_token(client)}
    response = client.post("/jobs?dry_run=true", data=form, content_type="multipart/form-data")
    assert response.status_code == 303
    with session_scope(settings.database_url) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1


def test_runnable_means_a_live_worker_consumes_the_jobs_queue(client, settings):
    """Heartbeats carry each node's queues and device class (shared/workers.py); a node
    that consumes only the CPU queue cannot run a style job (GPU queue)."""
    from shared.queue import CPU_QUEUE, GPU_QUEUE
    from shared.workers import Beacon, Offer

    beacons = redis.Redis.from_url(settings.broker_url)

    def workers() -> tuple[bool, dict]:
        form = style_form(tiny_png(96, 64), size="64")  # a form's files are read once
        body = client.post(DRY, data=form, content_type="multipart/form-data").get_json()
        return body["runnable"], body["workers"]

    cpu_only = Beacon(beacons, "cpu-node@test", offer=Offer((CPU_QUEUE,), "cpu")).start()
    try:
        assert workers() == (False, {"connected": 1, "serving_queue": 0, "device_classes": []})
        gpu = Beacon(beacons, "gpu-node@test", offer=Offer((GPU_QUEUE, CPU_QUEUE), "cuda"))
        gpu.start()
        try:
            runnable, found = workers()
            assert runnable is True
            assert found == {"connected": 2, "serving_queue": 1, "device_classes": ["cuda"]}
        finally:
            gpu.stop()
    finally:
        cpu_only.stop()
    assert workers() == (False, {"connected": 0, "serving_queue": 0, "device_classes": []})


def test_a_heartbeat_of_an_older_release_counts_but_offers_nothing(client, settings):
    from shared.workers import KEY_TTL_SECONDS, worker_key

    beacons = redis.Redis.from_url(settings.broker_url)
    beacons.set(worker_key("old@test"), "1234 1700000000", ex=KEY_TTL_SECONDS)
    try:
        form = style_form(tiny_png(96, 64), size="64")
        body = client.post(DRY, data=form, content_type="multipart/form-data").get_json()
        assert body["runnable"] is False and body["workers"]["connected"] == 1
    finally:
        beacons.delete(worker_key("old@test"))
