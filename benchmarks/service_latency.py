"""API latency with 50 concurrent clients against gunicorn on loopback.

The production server (``atelier web``'s gunicorn command) on a real database and a real
Redis; no worker, so every submitted job stays queued (the harder case for GET: its
``queue_position`` counts the queue). Two load shapes per request type:

- ``poll``: each of the 50 clients sends a request, waits for the answer, then pauses
  ``--think`` seconds (1 s: what the job page does) — 50 users watching their jobs.
  This is the shape the targets are for (p99 < 50 ms GET, < 150 ms POST).
- ``saturate``: no pause; every client fires again at once. Latency there is
  clients / throughput (Little's law), so it reports the server's capacity, in req/s.

Every POST answered 202 must be exactly one row and one queued message, nothing else.

    python benchmarks/service_latency.py [--clients 50] [--seconds 20] [--db postgresql]
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


def start_web(settings, workers: int) -> tuple[object, str]:
    from worker.embedded import web_command

    port = harness.free_port()
    # 4 threads, as the committed results were measured (before ATELIER_WEB_THREADS)
    command = web_command("127.0.0.1", port, workers=workers, threads=4)
    command[command.index("--access-logfile") + 1] = "/dev/null"
    proc = harness.start(command, harness.settings_env(settings), settings.var_dir / "web.log")
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base}/api/v1/jobs?limit=1", timeout=10).status_code == 200:
                return proc, base
        except requests.RequestException:
            time.sleep(0.2)
    harness.stop(proc)
    raise RuntimeError("gunicorn did not answer")


def upload() -> dict:
    return {
        "content": ("content.png", harness.sample_png(64, 48, 1), "image/png"),
        "style": ("style.png", harness.sample_png(32, 32, 2), "image/png"),
    }


FORM = {"kind": "style_transfer", "size": "64", "preset": "fast"}


def load(base: str, kind: str, clients: int, seconds: float, think: float, job_ids: list[str]):
    """Run ``clients`` threads for ``seconds``; returns (latencies, errors, new job ids)."""
    latencies: list[float] = []
    errors: list[str] = []
    created: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    files = upload()
    start_gate = threading.Barrier(clients)

    def client(index: int) -> None:
        session = requests.Session()
        start_gate.wait()
        time.sleep(think * index / clients)  # spread the pollers over one think period
        n = 0
        while time.monotonic() < stop_at:
            began = time.perf_counter()
            try:
                if kind == "GET":
                    job_id = job_ids[(index + n) % len(job_ids)]
                    response = session.get(f"{base}/api/v1/jobs/{job_id}", timeout=30)
                    ok = response.status_code == 200
                else:
                    response = session.post(
                        f"{base}/api/v1/jobs", data=FORM, files=files, timeout=30
                    )
                    ok = response.status_code == 202
                elapsed = time.perf_counter() - began
                with lock:
                    latencies.append(elapsed)
                    if not ok:
                        errors.append(f"{response.status_code} {response.text[:200]}")
                    elif kind == "POST":
                        created.append(response.json()["id"])
            except requests.RequestException as exc:
                with lock:
                    errors.append(repr(exc))
            n += 1
            if think:
                time.sleep(think)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors, created, time.monotonic() - began


def messages_in_queue(settings) -> list[str]:
    """Task ids of the messages waiting in the gpu queue (one per job, we check)."""
    import redis

    client = redis.Redis.from_url(settings.broker_url)
    return [json.loads(raw)["headers"]["id"] for raw in client.lrange("gpu", 0, -1)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--saturate-seconds", type=float, default=8)
    parser.add_argument("--think", type=float, default=1.0)
    parser.add_argument("--web-workers", type=int, default=4)
    parser.add_argument("--seed-jobs", type=int, default=200)
    parser.add_argument("--db", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    phases = {}
    # every client is the one owner ``local`` here: the per-owner quotas and the submit
    # rate limit would refuse the load this measures (their checks still run)
    no_quotas = {
        "max_active_per_owner": 10**6,
        "submit_rate_per_minute": 10**6,
        "max_queued_total": 10**6,
    }
    with harness.environment(args.db, device="cpu", **no_quotas) as settings:
        web, base = start_web(settings, args.web_workers)
        try:
            seeded = []
            for _ in range(args.seed_jobs):  # queued jobs to read (and to count in the queue)
                response = requests.post(
                    f"{base}/api/v1/jobs", data=FORM, files=upload(), timeout=30
                )
                assert response.status_code == 202, response.text
                seeded.append(response.json()["id"])
            posted: list[str] = []
            plan = [
                ("GET", "poll", args.seconds, args.think),
                ("POST", "poll", args.seconds, args.think),
                ("GET", "saturate", args.saturate_seconds, 0.0),
                ("POST", "saturate", args.saturate_seconds, 0.0),
            ]
            for kind, shape, seconds, think in plan:
                print(f"{kind} {shape}: {args.clients} clients for {seconds:.0f} s …", flush=True)
                lat, errors, created, wall = load(base, kind, args.clients, seconds, think, seeded)
                posted += created
                phases[f"{kind} {shape}"] = {
                    **harness.percentiles(lat),
                    "requests_per_s": round(len(lat) / wall, 1),
                    "errors": len(errors),
                    "error_samples": errors[:3],
                    # the machine may be shared: what else ran shows here
                    "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
                }
        finally:
            harness.stop(web)
        submitted = seeded + posted
        accounting = harness.account(settings, submitted, want="queued")
        queued = messages_in_queue(settings)
        accounting["messages"] = len(queued)
        accounting["messages_unique"] = len(set(queued))
        accounting["messages_match_jobs"] = set(queued) == set(submitted)
        accounting["ok"] = (
            accounting["ok"] and len(queued) == len(set(queued)) and set(queued) == set(submitted)
        )

    result = {
        "machine": harness.machine(),
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "server": f"gunicorn gthread, {args.web_workers} workers x 4 threads, loopback",
        "phases": phases,
        "target": {"GET poll p99_ms": 50, "POST poll p99_ms": 150},
        "accounting": accounting,
    }
    path = harness.write_result("service_latency", result, args.out)
    rows = [
        [name, p["n"], p["requests_per_s"], p["p50_ms"], p["p90_ms"], p["p99_ms"], p["errors"]]
        for name, p in phases.items()
    ]
    print(harness.table(rows, ["phase", "n", "req/s", "p50 ms", "p90 ms", "p99 ms", "errors"]))
    print(
        f"jobs {accounting['submitted']}, rows {accounting['rows']}, messages "
        f"{accounting['messages']}: lost {accounting['lost']}, duplicated "
        f"{accounting['duplicated']}; wrote {path}"
    )
    return 0 if accounting["ok"] and not any(p["errors"] for p in phases.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
