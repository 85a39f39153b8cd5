"""Static checks: docker-compose.yml matches the code, and the package boundaries hold."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import yaml

from shared.settings import Settings
from worker.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


def _subcommands() -> dict:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


def test_compose_services_run_real_commands_with_real_settings():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"web", "worker-gpu", "worker-cpu", "dispatcher", "redis", "postgres"} <= set(services)
    commands = _subcommands()
    known_settings = {f"ATELIER_{name.upper()}" for name in Settings.__dataclass_fields__}
    for name, service in services.items():
        command = service.get("command")
        if not command or command[0] != "atelier":
            continue
        sub = commands[command[1]]  # KeyError: the compose file names a command we lack
        sub.parse_args(command[2:])  # SystemExit: an option the command does not take
        for key in service.get("environment", {}):
            if key.startswith("ATELIER_"):
                assert key in known_settings, f"{name}: unknown setting {key}"
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    redis_cmd = " ".join(services["redis"]["command"])
    assert "noeviction" in redis_cmd and "appendonly yes" in redis_cmd


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
        if path.is_file() and path.suffix in {".py", ".md", ".yml", ".toml", ".html", ".js", ""}:
            text = path.read_text(errors="ignore")
            for marker in MACHINE_PATHS:
                assert marker not in text, f"{name} names a machine path"
