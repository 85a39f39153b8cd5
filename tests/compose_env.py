"""docker-compose.yml as ``docker compose`` reads it: variables filled in from a ``.env``.

The compose file takes its secrets from required variables (``${NAME:?message}``), so the
tests that check its values must substitute them the way compose does, or they would
read the ``${...}`` text itself as a database URL or a setting.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
MAKE_ENV = ROOT / "deploy" / "make_env.py"

# compose's forms: $$ (a literal $), ${NAME}, ${NAME:-default}, ${NAME-default},
# ${NAME:?message}, ${NAME?message}, ${NAME:+other}, ${NAME+other}, $NAME
REFERENCE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(Exception):
    """A ``${NAME:?...}`` with NAME unset: compose refuses to start."""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """``text`` with every reference replaced as compose replaces it."""

    def replace(match: re.Match) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("name") or match.group("bare")
        op, arg = match.group("op"), match.group("arg")
        value = env.get(name)
        present = value is not None and (value != "" or not (op or "").startswith(":"))
        if op in (":?", "?"):
            if not present:
                raise MissingVariable(f"{name}: {arg}")
            return value
        if op in (":-", "-"):
            return value if present else arg
        if op in (":+", "+"):
            return arg if present else ""
        return value or ""

    return REFERENCE.sub(replace, text)


def render(data: object, env: Mapping[str, str]) -> object:
    """Every string in a parsed compose file (keys are not interpolated), substituted."""
    if isinstance(data, str):
        return interpolate(data, env)
    if isinstance(data, dict):
        return {key: render(value, env) for key, value in data.items()}
    if isinstance(data, list):
        return [render(value, env) for value in data]
    return data


def strings(data: object) -> list[str]:
    """Every string value in a parsed compose file."""
    if isinstance(data, str):
        return [data]
    if isinstance(data, dict):
        return [s for value in data.values() for s in strings(value)]
    if isinstance(data, list):
        return [s for value in data for s in strings(value)]
    return []


def raw_compose() -> dict:
    """docker-compose.yml parsed, with its ``${...}`` references as written."""
    return yaml.safe_load(COMPOSE.read_text())


def required_variables(data: object) -> set[str]:
    """Names the file references as ``${NAME:?...}``/``${NAME?...}``: no start without them."""
    return {
        match.group("name")
        for text in strings(data)
        for match in REFERENCE.finditer(text)
        if match.group("op") in (":?", "?")
    }


def read_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines of a ``.env`` (comments and blank lines skipped)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def make_env_module() -> ModuleType:
    """deploy/make_env.py, which is a script (deploy/ is no package), imported from its path."""
    spec = importlib.util.spec_from_file_location("make_env", MAKE_ENV)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sample_env() -> dict[str, str]:
    """Values like those ``make compose-env`` writes, made in memory."""
    return {name: make() for name, (_, make) in make_env_module().VARIABLES.items()}


def compose(env: Mapping[str, str] | None = None) -> dict:
    """docker-compose.yml as compose runs it, with ``env`` (default: a fresh sample) as .env."""
    return render(raw_compose(), sample_env() if env is None else env)
