"""200 clients on ``GET /api/v1/jobs/<id>/events`` of one web host, and their event delay.

One gunicorn (``atelier web``'s command: ``--workers 2``, gthread) with enough threads
for the streams (``--threads``) and ``ATELIER_MAX_STREAMS`` per process, its own Redis
and database (benchmarks/harness.py). ``--jobs`` running job rows; a publisher plays
their workers, publishing each job's progress once a second through
``shared.events.publish`` (what worker/progress.py calls after each progress write) with
the time it published in the event. ``--clients`` streams, spread over the jobs, each
note every event's delay (received − published). Meanwhile a poller GETs a job once a
second, to show the API still answers next to the streams. At the end the jobs succeed,
and every stream must see ``end`` and close.

Reports: how many streams connected and ended cleanly, the event delay percentiles, the
progress events per stream per second (at most 2: the stream's throttle), the API's
latency, and the Redis pub/sub connections the web held (one per web process).

    python benchmarks/event_stream.py [--clients 200] [--jobs 20] [--seconds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

WEB_WORKERS = 2  # `atelier web`'s default --workers


def start_web(settings, threads: int, streams: int, log: Path) -> tuple[object, str]:
    """``atelier web``'s gunicorn command with ``threads`` threads a process."""
    from worker.embedded import web_command

    port = harness.free_port()
    command = web_command("127.0.0.1", port, workers=WEB_WORKERS, threads=threads)
    env = {**harness.settings_env(settings), "ATELIER_MAX_STREAMS": str(streams)}
    proc = harness.start(command, env, log)
    base = f"http://127.0.0.1:{port}"
    harness.wait_answering(proc, f"{base}/healthz", "gunicorn")
    return proc, base


def running_jobs(settings, count: int) -> list:
    """``count`` jobs claimed by a pretend worker: their fences, to end them later."""
    from shared import states
    from shared.db import session_scope
    from shared.jobs import add_job, new_job_id

    fences = []
    with session_scope(settings.database_url) as session:
        for _ in range(count):
            job = add_job(
                session,
                job_id=new_job_id(),
                kind="style_transfer",
                owner="local",
                params={"size": 64},
                files=[],
            )
            session.flush()
            fences.append(states.claim(session, job.id, "bench-worker"))
    return fences


class Client(threading.Thread):
    """One stream: notes each progress event's delay and whether it saw ``end``."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.connected = threading.Event()
        self.delays: list[float] = []
        self.progress = 0
        self.ended = False
        self.error: str | None = None

    def run(self) -> None:
        try:
            with requests.get(self.url, stream=True, timeout=(10, 60)) as response:
                if response.status_code != 200:
                    self.error = f"HTTP {response.status_code}"
                    return
                self.connected.set()
                kind = None
                for line in response.iter_lines(decode_unicode=True):
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: ") and kind == "progress":
                        data = json.loads(line[6:])
                        self.delays.append(time.time() - data["published_at"])
                        self.progress += 1
                    elif line.startswith("data: ") and kind == "end":
                        self.ended = True
        except requests.RequestException as exc:
            self.error = type(exc).__name__
        finally:
            self.connected.set()


def publish_progress(settings, fences, stop: threading.Event) -> int:
    """Each job's progress once a second, as its worker would; returns events published."""
    from shared import events

    published, step = 0, 0
    while not stop.is_set():
        step += 1
        for fence in fences:
            data = {"current": step, "total": 1000, "published_at": time.time()}
            events.publish(settings.redis_url, fence.job_id, events.PROGRESS, data)
            published += 1
        stop.wait(1.0)
    return published


def poll_api(base: str, job_id: str, stop: threading.Event, latencies: list[float]) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        requests.get(f"{base}/api/v1/jobs/{job_id}", timeout=30).raise_for_status()
        latencies.append(time.perf_counter() - started)
        stop.wait(1.0)


def pubsub_connections(settings) -> int:
    import redis

    client = redis.Redis.from_url(settings.redis_url)
    try:
        return sum(1 for c in client.client_list() if int(c.get("sub", 0)) > 0)
    finally:
        client.close()


def finish(settings, fences) -> None:
    from shared import events, states
    from shared.db import session_scope

    for fence in fences:
        with session_scope(settings.database_url) as session:
            states.transition(session, fence.job_id, states.PROCESSING, fence=fence)
            states.transition(session, fence.job_id, states.SUCCEEDED, fence=fence)
        events.publish(settings.redis_url, fence.job_id, events.STATUS)


def run(args: argparse.Namespace) -> dict:
    # the kernel hands connections to whichever process accepts first, not evenly (an
    # earlier run with room for 110 a process saw one take 114): room for all in each
    streams_per_process = args.clients
    threads = streams_per_process + 10  # threads left for the API next to full streams
    with harness.environment(args.db) as settings:
        log = Path(settings.var_dir) / "web.log"
        proc, base = start_web(settings, threads, streams_per_process, log)
        try:
            fences = running_jobs(settings, args.jobs)
            clients = [
                Client(f"{base}/api/v1/jobs/{fences[i % len(fences)].job_id}/events")
                for i in range(args.clients)
            ]
            for client in clients:
                client.start()
            for client in clients:
                client.connected.wait(60)
            connected = sum(1 for c in clients if c.error is None)
            subscribers = pubsub_connections(settings)
            stop, latencies = threading.Event(), []
            poller = threading.Thread(
                target=poll_api, args=(base, fences[0].job_id, stop, latencies), daemon=True
            )
            poller.start()
            published = [0]
            publisher = threading.Thread(
                target=lambda: published.__setitem__(0, publish_progress(settings, fences, stop)),
                daemon=True,
            )
            publisher.start()
            time.sleep(args.seconds)
            stop.set()
            publisher.join(10)
            poller.join(30)
            time.sleep(1.0)  # the last throttled progress events go out
            finish(settings, fences)
            for client in clients:
                client.join(60)
        finally:
            harness.stop(proc)
    delays = [d for c in clients for d in c.delays]
    return {
        "machine": harness.machine(),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "server": f"gunicorn gthread, {WEB_WORKERS} workers x {threads} threads, "
        f"ATELIER_MAX_STREAMS={streams_per_process}",
        "database": args.db,
        "clients": args.clients,
        "jobs": args.jobs,
        "seconds": args.seconds,
        "connected": connected,
        "ended_cleanly": sum(1 for c in clients if c.ended and c.error is None),
        "errors": sorted({c.error for c in clients if c.error}),
        "redis_pubsub_connections": subscribers,
        "progress_published": published[0],
        "progress_received": len(delays),
        "progress_per_stream_per_second": round(
            len(delays) / max(1, args.clients) / args.seconds, 2
        ),
        "event_delay": harness.percentiles(delays),
        "api_get_while_streaming": harness.percentiles(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = run(args)
    path = harness.write_result("event_stream", result, args.out)
    print(json.dumps(result, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
