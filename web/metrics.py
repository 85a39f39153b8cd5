"""``GET /metrics`` in the Prometheus text format.

Every number is read from the database (the jobs table is the source of truth) and from
Redis (queue lengths), never from counters kept in this process: a gunicorn master runs
several workers and a scrape lands on any one of them, so per-process counters would
disagree. Any web process answers the same, give or take the cache below.

The endpoint is public unless ``ATELIER_METRICS_TOKEN`` is set, and the jobs-table part
runs GROUP BYs over the whole table, so that part is computed at most once per
:data:`DEFAULT_CACHE_SECONDS` per process (Flask config ``METRICS_CACHE_SECONDS``) and
reused in between (a write through the same process drops it). The queue lengths are
one pipelined round trip to Redis and are read on every scrape: they are what autoscaling
watches, and they move fastest.

``atelier_queue_load{queue}`` is what KEDA scales each queue's workers on
(deploy/k8s/base/scaledobjects.yaml): the messages waiting in the queue plus those a
worker holds. With ``acks_late`` a message stays in kombu's ``unacked`` hash from
delivery until its task ends, so that second part is the jobs running and prefetched,
which a scaler reading only the list length misses: it would see an empty queue while
every worker is busy and scale them away. The number is not divided by anything here:
jobs per worker is a property of the worker Deployment (its ``--concurrency`` and GPUs),
so the ScaledObject's threshold holds it, next to that Deployment, and the autoscaler's
``ceil(load / threshold)`` is the replica count. A worker killed outright leaves its
message in ``unacked`` until Redis redelivers it (the visibility timeout), so the load
counts that job once more meanwhile: one spare pod, never one too few.

Counters are counts of rows, so deleting finished jobs lowers them; Prometheus reads a
drop as a counter reset (``rate()`` stays right unless deletions are large and frequent).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Iterable
from itertools import accumulate

import redis
from flask import Blueprint, Response, current_app, jsonify, request
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
from shared.db import get_sessionmaker
from shared.errors import InputError
from shared.models import Job
from shared.queue import CPU_QUEUE, GPU_QUEUE
from shared.settings import Settings
from shared.timeutil import utcnow
from shared.workers import redis_client
from web import db
from web.cache import TTLCache

log = logging.getLogger(__name__)
bp = Blueprint("metrics", __name__)

QUEUES = (GPU_QUEUE, CPU_QUEUE)
# kombu's Redis transport keeps priorities 3, 6 and 9 in lists named queue + sep + step
KOMBU_PRIORITY_SEP = "\x06\x16"
KOMBU_PRIORITY_STEPS = (3, 6, 9)
KOMBU_UNACKED = "unacked"
WAIT_BUCKETS = (0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600)
RUN_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200)
DEFAULT_CACHE_SECONDS = 5.0
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# (exposition text of the jobs-table families, whether the read worked) per database
_database_parts: TTLCache[tuple[bytes, bool]] = TTLCache()


def _seconds_between(session: Session, start, end) -> ColumnElement[float]:
    """``end - start`` in seconds, in SQL, on SQLite and PostgreSQL alike."""
    if session.get_bind().dialect.name == "sqlite":
        return (func.julianday(end) - func.julianday(start)) * literal_column("86400.0")
    return extract("epoch", end - start)


def _histograms(
    session: Session, name: str, doc: str, start, end, buckets: tuple[float, ...], by_status: bool
) -> HistogramMetricFamily:
    """One GROUP BY on (labels, bucket): each row's duration is placed in its first bucket
    by one CASE, instead of one SUM(CASE) per bucket, which on SQLite recomputed the
    duration a dozen times per row; the cumulative counts are summed here."""
    seconds = _seconds_between(session, start, end)
    labels = [Job.kind, Job.status] if by_status else [Job.kind]
    slot = case(*((seconds <= bound, i) for i, bound in enumerate(buckets)), else_=len(buckets))
    rows = session.execute(
        select(*labels, slot, func.count(), func.coalesce(func.sum(seconds), 0.0))
        .where(start.is_not(None), end.is_not(None))
        .group_by(*labels, slot)
    ).all()
    per_key: dict[tuple, tuple[list[int], list[float]]] = {}
    for row in rows:
        keys = tuple(row[: len(labels)])
        index, count, total = row[len(labels) :]
        counts, totals = per_key.setdefault(keys, ([0] * (len(buckets) + 1), [0.0]))
        counts[int(index)] += int(count)
        totals[0] += float(total)
    family = HistogramMetricFamily(name, doc, labels=["kind", "status"] if by_status else ["kind"])
    for keys, (counts, totals) in sorted(per_key.items()):
        cumulative = list(accumulate(counts))
        points = [(floatToGoString(b), n) for b, n in zip(buckets, cumulative[:-1], strict=True)]
        points.append(("+Inf", cumulative[-1]))
        family.add_metric(list(keys), points, sum_value=totals[0])
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


def unacked_per_queue(entries: Iterable[bytes | str]) -> dict[str, int]:
    """Count kombu's ``unacked`` hash values by routing key, which is the queue's name.

    Each value is kombu's JSON ``[message, exchange, routing_key]``; Celery routes a task
    to queue Q through exchange Q with routing key Q. An entry that does not parse counts
    in the total (``atelier_queue_unacked``) but toward no queue.
    """
    counts: dict[str, int] = {}
    for entry in entries:
        try:
            routing_key = json.loads(entry)[2]
        except (ValueError, TypeError, IndexError, KeyError):
            continue
        if isinstance(routing_key, str):
            counts[routing_key] = counts.get(routing_key, 0) + 1
    return counts


def queue_metrics(client: redis.Redis, queues: Iterable[str] = QUEUES) -> list[Metric]:
    """Messages waiting in each queue (all priority lists), delivered-but-unacked ones, and
    their sum per queue (the load KEDA scales on; see the module docstring)."""
    queues = list(queues)
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        pipe.llen(queue)
        for step in KOMBU_PRIORITY_STEPS:
            pipe.llen(f"{queue}{KOMBU_PRIORITY_SEP}{step}")
    pipe.hvals(KOMBU_UNACKED)  # a few entries: one per busy or prefetching worker slot
    *lengths, unacked_entries = pipe.execute()
    held = unacked_per_queue(unacked_entries)
    depth = GaugeMetricFamily(
        "atelier_queue_depth", "Messages waiting in a Celery queue (Redis)", labels=["queue"]
    )
    load = GaugeMetricFamily(
        "atelier_queue_load",
        "Messages waiting in a queue plus those its workers hold (running or prefetched):"
        " what KEDA scales the queue's workers on, divided by jobs per worker",
        labels=["queue"],
    )
    per_queue = 1 + len(KOMBU_PRIORITY_STEPS)
    for i, queue in enumerate(queues):
        waiting = sum(lengths[i * per_queue : (i + 1) * per_queue])
        depth.add_metric([queue], waiting)
        load.add_metric([queue], waiting + held.get(queue, 0))
    unacked = GaugeMetricFamily(
        "atelier_queue_unacked",
        "Messages a worker holds but has not acknowledged (running jobs, acks_late)",
        value=len(unacked_entries),
    )
    return [depth, unacked, load]


class _Snapshot:
    """A one-shot collector over metrics already read (the registry API wants ``collect``)."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self.metrics


def _exposition(metrics: list[Metric]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(metrics))
    return generate_latest(registry)


def _database_part(settings: Settings) -> tuple[bytes, bool]:
    """The jobs-table families as exposition text, and whether the database answered."""
    session = get_sessionmaker(settings.database_url)()
    try:
        return _exposition(database_metrics(session, settings.heartbeat_timeout)), True
    except Exception:  # shown as atelier_up{component="database"} 0
        log.warning("metrics: could not read the jobs table", exc_info=True)
        return b"", False
    finally:
        session.close()


def render(settings: Settings, cache_seconds: float = DEFAULT_CACHE_SECONDS) -> bytes:
    """The whole exposition; a part that is down shows as ``atelier_up{component} 0``.

    The jobs-table part may be up to ``cache_seconds`` old; the queue part is read now.
    The two are separate families, so their texts are simply joined.
    """
    started = time.perf_counter()
    key = (settings.database_url, settings.heartbeat_timeout)
    database_text, database_ok = _database_parts.get(
        key, cache_seconds, lambda: _database_part(settings)
    )
    up = GaugeMetricFamily(
        "atelier_up", "Whether this scrape could read a part", labels=["component"]
    )
    up.add_metric(["database"], int(database_ok))
    metrics: list[Metric] = []
    try:
        metrics += queue_metrics(redis_client(settings.broker_url))
        up.add_metric(["redis"], 1)
    except (redis.RedisError, RuntimeError):  # RuntimeError: no Redis URL configured
        up.add_metric(["redis"], 0)
    elapsed = time.perf_counter() - started
    metrics += [
        up,
        GaugeMetricFamily(
            "atelier_scrape_duration_seconds", "Time this scrape took", value=elapsed
        ),
    ]
    return database_text + _exposition(metrics)


def _refusal(settings: Settings) -> Response | None:
    """A 401 unless the request carries ``ATELIER_METRICS_TOKEN`` (when one is set).

    Checked here, not by web.auth: /metrics is public there, and this token is not an
    API token. The error is the API's JSON error; the comparison takes the same time
    whatever the sent token shares with the right one.
    """
    expected = settings.metrics_token
    if not expected:
        return None
    scheme, _, sent = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and secrets.compare_digest(
        sent.strip().encode(), expected.encode()
    ):
        return None
    error = InputError(
        "missing or wrong metrics token: send Authorization: Bearer <ATELIER_METRICS_TOKEN>",
        status=401,
        code="unauthorized",
    )
    response = jsonify(error.as_dict())
    response.status_code = error.status
    response.headers["WWW-Authenticate"] = 'Bearer realm="atelier-metrics"'
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.after_app_request
def _forget_after_writes(response: Response) -> Response:
    """Drop the cached jobs-table part after a write through this process succeeds.

    A client that submits, cancels or deletes and then scrapes sees its own change at
    once; changes made elsewhere (workers, other web processes) show within the period.
    A write costs far more than the recount it causes, so this opens no cheap load.
    """
    if request.method in WRITE_METHODS and response.status_code < 400:
        _database_parts.clear()
    return response


@bp.get("/metrics")
def metrics_view():
    settings = db.settings()
    refusal = _refusal(settings)
    if refusal is not None:
        return refusal
    seconds = current_app.config.get("METRICS_CACHE_SECONDS", DEFAULT_CACHE_SECONDS)
    return Response(
        render(settings, seconds),
        content_type=CONTENT_TYPE_LATEST,
        headers={"Cache-Control": "no-store"},
    )
