"""A job requeued after a lost worker keeps its checkpoints for the next attempt; canceled
while it waits, no attempt will continue from them, so the cancel removes them."""

from __future__ import annotations

from shared.checkpoints import checkpoint_key
from shared.storage import open_storage
from tests.web.helpers import make_job


def test_canceling_a_requeued_job_removes_its_checkpoints(client, settings):
    job_id = make_job(settings, status="queued", attempts=2)
    storage = open_storage(settings.storage_url, settings)
    keys = [checkpoint_key(job_id, attempt) for attempt in (1, 2)]
    for key in keys:
        storage.put_bytes(key, b"state")
    response = client.post(f"/api/v1/jobs/{job_id}/cancel")
    assert response.status_code == 200 and response.get_json()["status"] == "canceled"
    assert not any(storage.exists(key) for key in keys)


def test_a_running_jobs_checkpoints_stay_until_its_worker_ends_it(client, settings):
    job_id = make_job(settings, status="processing", attempts=1)
    storage = open_storage(settings.storage_url, settings)
    storage.put_bytes(checkpoint_key(job_id, 1), b"state")
    response = client.post(f"/api/v1/jobs/{job_id}/cancel")
    assert response.status_code == 200 and response.get_json()["cancel_requested_at"]
    assert storage.exists(checkpoint_key(job_id, 1))  # the worker deletes them as it stops
