"""``GET /metrics`` in the Prometheus text format.

Every number is read at scrape time from the database (the jobs table is the source of
truth) and from Redis (queue lengths), never from counters kept in this process: a
gunicorn master runs several workers and a scrape lands on any one of them, so
per-process counters would disagree. Any web process answers the same.

Counters are counts of rows, so deleting finished jobs lowers them; Prometheus reads a
drop as a counter reset (``rate()`` stays right unless deletions are large and frequent).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from functools import lru_cache

import redis
from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString
from sqlalchemy import ColumnElement, case, extract, func, literal_column, select
from sqlalchemy.orm import Session

from shared import states
from shared.models import Job
from shared.queue import CPU_QUEUE, GPU_QUEUE
from shared.timeutil import utcnow
from web import db

bp = Blueprint("metrics", __name__)

QUEUES = (GPU_QUEUE, CPU_QUEUE)
# kombu's Redis transport keeps priorities 3, 6 and 9 in lists named queue + sep + step
KOMBU_PRIORITY_SEP = "\x06\x16"
KOMBU_PRIORITY_STEPS = (3, 6, 9)
KOMBU_UNACKED = "unacked"
WAIT_BUCKETS = (0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600)
RUN_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200)


def _seconds_between(session: Session, start, end) -> ColumnElement[float]:
    """``end - start`` in seconds, in SQL, on SQLite and PostgreSQL alike."""
    if session.get_bind().dialect.name == "sqlite":
        return (func.julianday(end) - func.julianday(start)) * literal_column("86400.0")
    return extract("epoch", end - start)


def _histograms(
    session: Session, name: str, doc: str, start, end, buckets: tuple[float, ...], by_status: bool
) -> HistogramMetricFamily:
    seconds = _seconds_between(session, start, end)
    labels = [Job.kind, Job.status] if by_status else [Job.kind]
    rows = session.execute(
        select(
            *labels,
            func.count(),
            func.coalesce(func.sum(seconds), 0.0),
            *(func.sum(case((seconds <= bound, 1), else_=0)) for bound in buckets),
        )
        .where(start.is_not(None), end.is_not(None))
        .group_by(*labels)
    ).all()
    family = HistogramMetricFamily(name, doc, labels=["kind", "status"] if by_status else ["kind"])
    for row in rows:
        keys = list(row[: len(labels)])
        count, total, cumulative = row[len(labels)], row[len(labels) + 1], row[len(labels) + 2 :]
        points = [
            (floatToGoString(bound), int(n or 0))
            for bound, n in zip(buckets, cumulative, strict=True)
        ]
        points.append(("+Inf", int(count)))
        family.add_metric(keys, points, sum_value=float(total))
    return family


def database_metrics(session: Session, heartbeat_timeout: float) -> list[Metric]:
    """Job counts, in-flight gauges, busy workers and time histograms from the jobs table."""
    submitted = CounterMetricFamily(
        "atelier_jobs_submitted", "Jobs accepted (rows in the jobs table)", labels=["kind"]
    )
    finished = CounterMetricFamily(
        "atelier_jobs_finished", "Jobs that reached a terminal state", labels=["kind", "status"]
    )
    current = GaugeMetricFamily(
        "atelier_jobs_current", "Jobs now queued, starting or processing", labels=["kind", "status"]
    )
    per_kind: dict[str, int] = {}
    for kind, status, count in session.execute(
        select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status)
    ):
        per_kind[kind] = per_kind.get(kind, 0) + count
        if status in states.TERMINAL:
            finished.add_metric([kind, status], count)
        else:
            current.add_metric([kind, status], count)
    for kind, count in sorted(per_kind.items()):
        submitted.add_metric([kind], count)

    fresh = utcnow().timestamp() - heartbeat_timeout
    busy = stale = 0
    for (heartbeat,) in session.execute(
        select(Job.heartbeat_at).where(Job.status.in_(sorted(states.RUNNING)))
    ):
        if heartbeat is not None and heartbeat.timestamp() >= fresh:
            busy += 1
        else:
            stale += 1
    return [
        submitted,
        finished,
        current,
        GaugeMetricFamily(
            "atelier_workers_busy",
            "Worker processes running a job (a running job with a fresh heartbeat)",
            value=busy,
        ),
        GaugeMetricFamily(
            "atelier_jobs_stale",
            "Running jobs whose worker stopped heartbeating (the dispatcher requeues them)",
            value=stale,
        ),
        _histograms(
            session,
            "atelier_job_wait_seconds",
            "From submit to a worker's claim (queued -> starting)",
            Job.created_at,
            Job.started_at,
            WAIT_BUCKETS,
            by_status=False,
        ),
        _histograms(
            session,
            "atelier_job_run_seconds",
            "From a worker's claim to the terminal state, finished jobs only",
            Job.started_at,
            Job.finished_at,
            RUN_BUCKETS,
            by_status=True,
        ),
    ]


@lru_cache(maxsize=4)
def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)


def queue_metrics(client: redis.Redis, queues: Iterable[str] = QUEUES) -> list[Metric]:
    """Messages waiting in each queue (all priority lists) and delivered-but-unacked ones."""
    queues = list(queues)
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        pipe.llen(queue)
        for step in KOMBU_PRIORITY_STEPS:
            pipe.llen(f"{queue}{KOMBU_PRIORITY_SEP}{step}")
    pipe.hlen(KOMBU_UNACKED)
    lengths = pipe.execute()
    depth = GaugeMetricFamily(
        "atelier_queue_depth", "Messages waiting in a Celery queue (Redis)", labels=["queue"]
    )
    per_queue = 1 + len(KOMBU_PRIORITY_STEPS)
    for i, queue in enumerate(queues):
        depth.add_metric([queue], sum(lengths[i * per_queue : (i + 1) * per_queue]))
    unacked = GaugeMetricFamily(
        "atelier_queue_unacked",
        "Messages a worker holds but has not acknowledged (running jobs, acks_late)",
        value=lengths[-1],
    )
    return [depth, unacked]


class _Snapshot:
    """A one-shot collector over metrics already read (the registry API wants ``collect``)."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self.metrics


def render() -> bytes:
    """The whole exposition; a part that is down shows as ``atelier_up{component} 0``."""
    started = time.perf_counter()
    settings = db.settings()
    up = GaugeMetricFamily(
        "atelier_up", "Whether this scrape could read a part", labels=["component"]
    )
    metrics: list[Metric] = []
    try:
        metrics += database_metrics(db.session(), settings.heartbeat_timeout)
        up.add_metric(["database"], 1)
    except Exception:
        db.session().rollback()
        up.add_metric(["database"], 0)
    try:
        metrics += queue_metrics(_redis(settings.broker_url))
        up.add_metric(["redis"], 1)
    except Exception:
        up.add_metric(["redis"], 0)
    elapsed = time.perf_counter() - started
    metrics += [
        up,
        GaugeMetricFamily(
            "atelier_scrape_duration_seconds", "Time this scrape took", value=elapsed
        ),
    ]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(metrics))
    return generate_latest(registry)


@bp.get("/metrics")
def metrics_view():
    return Response(
        render(), content_type=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"}
    )
