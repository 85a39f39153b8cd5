"""A sweep's dry run: the sum of its children's estimates, how many it would create,
and the queue its children wait on."""

from __future__ import annotations

import io
from itertools import product

import pytest
import redis
from sqlalchemy import func, select

from shared.db import session_scope
from shared.models import Job
from tests.conftest import tiny_png
from tests.web.helpers import as_json, make_job
from web import dry_run

DRY = "/api/v1/jobs?dry_run=true"
CONTENTS = (tiny_png(96, 64, color=(200, 40, 40)), tiny_png(40, 72, color=(40, 200, 40)))
STYLE = tiny_png(48, 48, color=(40, 40, 200))
STRENGTHS, PRESETS = ("0.3", "0.7"), ("fast", "quality")
SHARED = {"size": "64", "seed": "5"}  # every other field a child takes as it is


@pytest.fixture(autouse=True)
def _fresh_model():
    dry_run.reset_model()  # the fit is per process; each test has its own database
    yield
    dry_run.reset_model()


def sweep_dry_run(client) -> dict:
    form = {
        "kind": "sweep",
        "content": [(io.BytesIO(data), f"c{i}.png") for i, data in enumerate(CONTENTS)],
        "style": (io.BytesIO(STYLE), "s.png"),
        "strengths": ",".join(STRENGTHS),
        "presets": ",".join(PRESETS),
        **SHARED,
    }
    response = client.post(DRY, data=form, content_type="multipart/form-data")
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def single_dry_runs(client) -> list[dict]:
    """The same children, in grid order, each submitted alone as a style job."""
    answers = []
    for content, strength, preset in product(CONTENTS, STRENGTHS, PRESETS):
        form = {
            "kind": "style_transfer",
            "content": (io.BytesIO(content), "c.png"),
            "style": (io.BytesIO(STYLE), "s.png"),
            "strength": strength,
            "preset": preset,
            **SHARED,
        }
        response = client.post(DRY, data=form, content_type="multipart/form-data")
        assert response.status_code == 200, response.get_json()
        answers.append(response.get_json())
    return answers


def _finished_style_job(settings, side: int, steps: int, seconds: float) -> None:
    scales = [{"size": [side, side], "steps": steps, "seconds": seconds}]
    make_job(
        settings,
        files={"metrics.json": ("output", as_json({"scales": scales, "device": "cpu"}))},
        metrics={"device": "cpu", "run_seconds": seconds},
    )


@pytest.mark.parametrize("fitted", [False, True], ids=["built-in", "fitted"])
def test_a_sweeps_estimate_is_the_sum_of_its_children_alone(client, settings, fitted):
    if fitted:  # a line fit on finished jobs, not only the built-in coefficients
        for side, steps in [(100, 10), (100, 30), (200, 10), (200, 20), (300, 5)]:
            _finished_style_job(settings, side, steps, 3e-4 * (side * side * steps) ** 0.85)
    sweep = sweep_dry_run(client)
    singles = single_dry_runs(client)
    assert sweep["kind"] == "sweep" and sweep["children"] == len(singles) == 8
    assert all("children" not in single for single in singles)
    for device in ("cpu", "cuda"):
        mine = sweep["estimate"][device]
        alone = [single["estimate"][device] for single in singles]
        seconds = [a["seconds"] for a in alone]
        assert len(set(seconds)) > 1, "presets and contents differ: not 8 x one child"
        assert mine["seconds"] == float(f"{sum(seconds):.3g}")  # 3 significant digits
        assert mine["peak_bytes"] == max(a["peak_bytes"] for a in alone)
        assert (
            mine["fit_on_jobs"]
            == alone[0]["fit_on_jobs"]
            == (5 if fitted else 0) * (device == "cpu")
        )
    assert sweep["basis"]["work_unit"] == "pixel-steps"
    assert sweep["basis"]["work"] == sum(single["basis"]["work"] for single in singles)
    assert "contact sheet is not counted" in sweep["basis"]["sweep"]
    with session_scope(settings.database_url) as session:
        jobs = session.scalar(select(func.count()).select_from(Job))
    assert jobs == (5 if fitted else 0), "a dry run stores nothing"


def test_a_sweep_waits_on_its_childrens_queue_and_needs_both_served(client, settings):
    """Its place is among the style jobs its children queue behind; it runs only where
    a worker takes the children's queue (gpu) and one takes its own (cpu)."""
    from shared.queue import CPU_QUEUE, GPU_QUEUE
    from shared.workers import Beacon, Offer

    for _ in range(2):
        make_job(settings, status="queued")  # style jobs, on the gpu queue
    body = sweep_dry_run(client)
    assert body["queue_position"] == 3 and body["runnable"] is False
    beacons = redis.Redis.from_url(settings.broker_url)
    cpu = Beacon(beacons, "cpu-node@test", offer=Offer((CPU_QUEUE,), "cpu")).start()
    try:
        body = sweep_dry_run(client)
        assert body["runnable"] is False, "no worker would run its children"
        assert body["workers"] == {"connected": 1, "serving_queue": 0, "device_classes": []}
        gpu = Beacon(beacons, "gpu-node@test", offer=Offer((GPU_QUEUE,), "cuda")).start()
        try:
            body = sweep_dry_run(client)
            assert body["runnable"] is True
            assert body["workers"] == {
                "connected": 2,
                "serving_queue": 1,
                "device_classes": ["cuda"],
            }
        finally:
            gpu.stop()
    finally:
        cpu.stop()


def test_the_answers_match_the_dry_run_schema(client):
    from jsonschema import Draft202012Validator

    spec = client.get("/api/v1/openapi.json").json
    root = {"components": spec["components"], "$ref": "#/components/schemas/DryRun"}
    described = set(spec["components"]["schemas"]["DryRun"]["properties"])
    for body in (sweep_dry_run(client), single_dry_runs(client)[0]):
        Draft202012Validator(root).validate(body)
        assert set(body) <= described
