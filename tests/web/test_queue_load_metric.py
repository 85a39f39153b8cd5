"""``atelier_queue_load{queue}``: waiting plus held messages, what KEDA scales workers on.

Messages are sent as the web sends them (web.queue's Celery client) and taken as a worker
takes them: a kombu consumer on the same Redis transport with prefetch 1 and late acks,
so a taken message sits in kombu's ``unacked`` hash until it is acknowledged.
"""

from __future__ import annotations

import dataclasses

import pytest
import redis
from kombu import Connection

from shared.queue import CPU_QUEUE, DELIVER_WEBHOOK_TASK, GPU_QUEUE, RUN_JOB_TASK
from shared.settings import Settings
from web.metrics import KOMBU_UNACKED, queue_metrics
from web.queue import make_client


def _gauges(client: redis.Redis) -> dict[tuple[str, str | None], float]:
    """{(family, queue label or None): value} from one read of the queue families."""
    return {
        (metric.name, sample.labels.get("queue")): sample.value
        for metric in queue_metrics(client)
        for sample in metric.samples
    }


def test_load_counts_the_jobs_a_worker_holds_as_well_as_those_waiting(redis_url):
    sender = make_client(Settings(redis_url=redis_url))
    for i in range(3):
        sender.send_task(RUN_JOB_TASK, args=[f"job-{i}"], queue=GPU_QUEUE, task_id=f"job-{i}")
    sender.send_task(DELIVER_WEBHOOK_TASK, args=["delivery"], queue=CPU_QUEUE)
    client = redis.Redis.from_url(redis_url)
    before = _gauges(client)
    assert before[("atelier_queue_load", GPU_QUEUE)] == 3
    assert before[("atelier_queue_load", CPU_QUEUE)] == 1

    with Connection(redis_url) as connection:
        jobs = connection.SimpleQueue(GPU_QUEUE, no_ack=False)
        jobs.consumer.qos(prefetch_count=1)
        running = jobs.get(timeout=10)  # the worker's job: taken, not yet acknowledged
        assert running.payload is not None
        during = _gauges(client)
        # the list shrank, which is all a Redis list-length scaler sees...
        assert during[("atelier_queue_depth", GPU_QUEUE)] == 2
        assert during[("atelier_queue_unacked", None)] == 1
        # ...while the load still counts the running job, on its own queue only
        assert during[("atelier_queue_load", GPU_QUEUE)] == 3
        assert during[("atelier_queue_load", CPU_QUEUE)] == 1
        running.ack()  # the job ended
        after = _gauges(client)
        assert after[("atelier_queue_load", GPU_QUEUE)] == 2
        assert after[("atelier_queue_unacked", None)] == 0
        jobs.close()


def test_an_unreadable_unacked_entry_counts_in_the_total_but_toward_no_queue(redis_url):
    client = redis.Redis.from_url(redis_url)
    client.hset(KOMBU_UNACKED, "tag-1", b"not json")
    client.hset(KOMBU_UNACKED, "tag-2", '[{"body": "x"}, "gpu", "gpu"]')
    gauges = _gauges(client)
    assert gauges[("atelier_queue_unacked", None)] == 2
    assert gauges[("atelier_queue_load", GPU_QUEUE)] == 1
    assert gauges[("atelier_queue_load", CPU_QUEUE)] == 0


@pytest.mark.parametrize("fresh_db_url", ["sqlite"], indirect=True)
def test_the_load_is_served_behind_the_metrics_token(settings):
    """KEDA's Prometheus reads it the way the README configures the scrape."""
    from prometheus_client.parser import text_string_to_metric_families

    from web import create_app

    guarded = dataclasses.replace(settings, metrics_token="scrape-token")
    client = create_app({"ATELIER_SETTINGS": guarded, "TESTING": True}).test_client()
    assert client.get("/metrics").status_code == 401
    response = client.get("/metrics", headers={"Authorization": "Bearer scrape-token"})
    assert response.status_code == 200
    families = {
        family.name: family
        for family in text_string_to_metric_families(response.get_data(as_text=True))
    }
    samples = {s.labels["queue"]: s.value for s in families["atelier_queue_load"].samples}
    assert samples == {GPU_QUEUE: 0, CPU_QUEUE: 0}
    assert families["atelier_queue_load"].type == "gauge"
