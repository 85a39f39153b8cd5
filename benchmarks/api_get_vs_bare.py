"""``GET /api/v1/jobs/<id>`` against a bare Flask view serving the same JSON.

Both run under the gunicorn command of ``atelier web`` (2 workers x 4 threads), on a real
database and a real Redis of their own, one after the other and interleaved (real, bare,
real, bare…) because the machine is shared and noisy: a ratio from neighbouring runs is
steadier than one from runs minutes apart. The bare app answers the body the real app
gave for the same job, through ``jsonify``, so the difference is what Atelier adds:
the Host check, auth, the database read, the queue position and the serialisation.

- ``saturate``: ``wrk`` (or, without it, a Python threaded client) keeps 50 connections
  busy; reports req/s of each app and their ratio (target: at least 0.5), and the
  gunicorn processes' CPU per request, which neighbours' load disturbs less than req/s
  (it leaves out the load generator and, on PostgreSQL, the database server).
- ``poll``: 50 clients each GET a job once a second (what the job page does); reports
  the real app's latency percentiles (target: p99 under 50 ms).

The job read is a queued one three quarters down ``--seed-jobs`` queued jobs, with two
input files, so its ``queue_position`` is counted (the dearer case). SQLite is the
default because it is ``atelier web``'s default database. On PostgreSQL the seeded table
is analysed before the runs, as autovacuum analyses a table that grew like this within
its first minute: otherwise the plan (and the database's CPU per read, about half as
much again before) would depend on whether autovacuum came by during the runs. The
machine's load average is recorded at the start and end of the runs and with each run:
the machine may be shared, and the numbers mean little without it.

    python benchmarks/api_get_vs_bare.py [--db sqlite|postgresql] [--auth off|token]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

BODY_ENV = "ATELIER_BENCH_BARE_BODY"
WEB_WORKERS = 2  # `atelier web`'s default --workers


def bare_app():
    """The comparison app: one Flask view that returns the stored body with ``jsonify``."""
    from flask import Flask, jsonify

    body = json.loads(Path(os.environ[BODY_ENV]).read_text())
    app = Flask("bare")

    @app.get("/api/v1/jobs/<job_id>")
    def get_job(job_id: str):
        return jsonify(body)

    return app


def start_gunicorn(target: str, env: dict[str, str], log: Path) -> tuple[object, str]:
    """``atelier web``'s gunicorn command serving ``target``; returns (process, base URL)."""
    from worker.embedded import web_command

    port = harness.free_port()
    # 4 threads, as the committed results were measured (before ATELIER_WEB_THREADS);
    # no event streams run here, so more threads would only add lock contention
    command = web_command("127.0.0.1", port, workers=WEB_WORKERS, threads=4)
    command[command.index("web.wsgi:app")] = target
    proc = harness.start(command, env, log)
    base = f"http://127.0.0.1:{port}"
    harness.wait_answering(proc, f"{base}/healthz", f"gunicorn ({target})")
    return proc, base


def seed(settings, count: int, auth: str) -> tuple[list[str], dict[str, str]]:
    """``count`` queued jobs with two input files each; headers that authenticate."""
    from shared.db import session_scope
    from shared.jobs import StoredFile, add_job, new_job_id
    from shared.tokens import create_token

    inputs = [
        StoredFile("content", "content.png", "image/png", 4096),
        StoredFile("style", "style.png", "image/png", 2048),
    ]
    ids = []
    with session_scope(settings.database_url) as session:
        for _ in range(count):
            job = add_job(
                session,
                job_id=new_job_id(),
                kind="style_transfer",
                owner="local",
                params={"size": 64, "preset": "fast"},
                files=inputs,
            )
            session.flush()  # a distinct created_at per job, as real submits have
            ids.append(job.id)
        headers = {}
        if auth == "token":
            _, token = create_token(session, "local", "user")
            headers["Authorization"] = f"Bearer {token}"
        if session.get_bind().dialect.name == "postgresql":
            session.commit()
            session.connection().exec_driver_sql("ANALYZE jobs")
            session.connection().exec_driver_sql("ANALYZE job_files")
    return ids, headers


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def server_cpu(proc) -> float:
    """CPU seconds (user + system) used so far by a gunicorn master and its workers."""
    import psutil

    total = 0.0
    root = psutil.Process(proc.pid)
    for part in [root, *root.children(recursive=True)]:
        try:
            times = part.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def measure(load, proc, url: str, seconds: float, connections: int, headers: dict) -> dict:
    """One load run, plus the server's CPU per request: steadier than req/s when neighbours
    take the cores (it leaves out the load generator and, on PostgreSQL, the server)."""
    before = server_cpu(proc)
    result = load(url, seconds, connections, headers)
    used = server_cpu(proc) - before
    result["load_average"] = load_average()
    requests_done = result["requests_per_s"] * seconds
    result["server_cpu_ms_per_request"] = round(1000 * used / max(requests_done, 1), 3)
    return result


def run_wrk(url: str, seconds: float, connections: int, headers: dict[str, str]) -> dict:
    command = ["wrk", f"-t{min(connections, 2)}", f"-c{connections}", f"-d{seconds:.0f}s"]
    command += ["--latency", "--timeout", "10s"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    out = subprocess.run(command + [url], capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "requests_per_s": rate,
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(1) if errors else None,
        "p99": (re.search(r"99%\s+(\S+)", out) or [None, None])[1],
    }


def run_threads(url: str, seconds: float, connections: int, headers: dict[str, str]) -> dict:
    """Fallback load: ``connections`` keep-alive clients firing back to back."""
    count, bad, lock = [0], [0], threading.Lock()
    stop_at = time.monotonic() + seconds

    def client() -> None:
        session = requests.Session()
        while time.monotonic() < stop_at:
            ok = session.get(url, headers=headers, timeout=30).status_code == 200
            with lock:
                count[0] += 1
                bad[0] += not ok

    threads = [threading.Thread(target=client) for _ in range(connections)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"requests_per_s": round(count[0] / (time.monotonic() - began), 1), "non_2xx": bad[0]}


def poll(url: str, clients: int, seconds: float, headers: dict[str, str]) -> dict:
    """``clients`` pollers, one GET a second each, spread over the second."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(index: int) -> None:
        session = requests.Session()
        time.sleep(index / clients)
        while time.monotonic() < stop_at:
            began = time.perf_counter()
            ok = session.get(url, headers=headers, timeout=30).status_code == 200
            with lock:
                latencies.append(time.perf_counter() - began)
                errors[0] += not ok
            time.sleep(max(0.0, 1.0 - (time.perf_counter() - began)))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {**harness.percentiles(latencies), "errors": errors[0]}


def start_bare(real_base: str, path: str, headers: dict, env: dict, var_dir: Path):
    """The bare app, serving the body the real app gives for ``path``."""
    response = requests.get(real_base + path, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    body_file = var_dir / "body.json"
    body_file.write_text(response.text)
    bare_env = {**env, BODY_ENV: str(body_file)}
    bare_env["PYTHONPATH"] = f"{Path(__file__).resolve().parent}:{env['PYTHONPATH']}"
    bare, bare_base = start_gunicorn("api_get_vs_bare:bare_app()", bare_env, var_dir / "bare.log")
    assert requests.get(bare_base + path, timeout=10).json() == response.json()
    return bare, bare_base


def interleaved(load, servers: dict, path: str, args, headers: dict) -> list[dict]:
    """``args.rounds`` pairs of runs, real then bare, after a short warm-up of each."""
    for _, base in servers.values():  # imports, pools, caches
        load(base + path, 2, args.connections, headers)
    rounds = []
    for n in range(args.rounds):
        pair = {}
        for name, (proc, base) in servers.items():
            pair[name] = measure(load, proc, base + path, args.seconds, args.connections, headers)
            print(f"round {n + 1} {name}: {pair[name]}", flush=True)
        real, bare = pair["real"], pair["bare"]
        pair["ratio"] = round(real["requests_per_s"] / bare["requests_per_s"], 3)
        pair["cpu_ratio"] = round(
            bare["server_cpu_ms_per_request"] / real["server_cpu_ms_per_request"], 3
        )
        rounds.append(pair)
    return rounds


def summary(rounds: list[dict]) -> dict:
    """Medians over the rounds, and the ratios of the medians."""

    def median(name: str, key: str) -> float:
        return statistics.median(r[name][key] for r in rounds)

    real_rate, bare_rate = median("real", "requests_per_s"), median("bare", "requests_per_s")
    real_cpu = median("real", "server_cpu_ms_per_request")
    bare_cpu = median("bare", "server_cpu_ms_per_request")
    return {
        "median_real_per_s": real_rate,
        "median_bare_per_s": bare_rate,
        "ratio_of_medians": round(real_rate / bare_rate, 3),
        "median_real_cpu_ms_per_request": real_cpu,
        "median_bare_cpu_ms_per_request": bare_cpu,
        "cpu_ratio_of_medians": round(bare_cpu / real_cpu, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--auth", choices=("off", "token"), default="off")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="real/bare pairs, interleaved")
    parser.add_argument("--poll-seconds", type=float, default=20)
    parser.add_argument("--seed-jobs", type=int, default=200)
    parser.add_argument("--label", default="", help="what code this is (e.g. a commit)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    load = run_wrk if shutil.which("wrk") else run_threads
    load_at_start = load_average()

    with harness.environment(args.db, device="cpu", auth=args.auth) as settings:
        ids, headers = seed(settings, args.seed_jobs, args.auth)
        path = f"/api/v1/jobs/{ids[len(ids) * 3 // 4]}"
        env = harness.settings_env(settings)
        servers = {"real": start_gunicorn("web.wsgi:app", env, settings.var_dir / "real.log")}
        try:
            real_base = servers["real"][1]
            servers["bare"] = start_bare(real_base, path, headers, env, settings.var_dir)
            rounds = interleaved(load, servers, path, args, headers)
            print(f"poll: {args.connections} clients, once a second …", flush=True)
            polled = poll(real_base + path, args.connections, args.poll_seconds, headers)
        finally:
            for proc, _ in servers.values():
                harness.stop(proc)

    result = {
        "machine": harness.machine(),
        "label": args.label,
        # the output path is this machine's business, not the result's
        "config": {k: v for k, v in vars(args).items() if not isinstance(v, Path)},
        "server": f"gunicorn gthread, {WEB_WORKERS} workers x 4 threads, loopback "
        "(the command of `atelier web`)",
        "load": "wrk" if load is run_wrk else "python threads",
        "rounds": rounds,
        **summary(rounds),
        "poll_real": polled,
        "load_average_1_5_15": {"start": load_at_start, "end": load_average()},
        "target": {"ratio": 0.5, "poll p99_ms": 50},
    }
    out = harness.write_result("api_get_vs_bare", result, args.out)
    print(
        f"real {result['median_real_per_s']} req/s, bare {result['median_bare_per_s']} req/s, "
        f"ratio {result['ratio_of_medians']} (server CPU per request "
        f"{result['median_real_cpu_ms_per_request']} vs "
        f"{result['median_bare_cpu_ms_per_request']} ms: {result['cpu_ratio_of_medians']}); "
        f"poll p99 {polled.get('p99_ms')} ms ({polled['errors']} errors); wrote {out}"
    )
    return 0 if not polled["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
