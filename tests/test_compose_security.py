"""docker-compose.yml exposes nothing without a secret, and commits no secret.

The deployment on one host used to answer on every interface with auth off, publish
Flower (which can shut workers down) without a login, and carry MinIO's root password in
the file. These checks read the file as compose does (variables substituted) and hold
the rules: auth on, a token or password in front of everything published, admin ports on
the host's loopback only, every secret from a required variable that
``deploy/make_env.py`` writes to a private ``.env``.
"""

from __future__ import annotations

import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from shared.settings import load_settings
from tests.compose_env import (
    MAKE_ENV,
    MissingVariable,
    compose,
    raw_compose,
    read_env_file,
    render,
    required_variables,
    strings,
)

# environment variables whose value is a credential (MINIO_ROOT_USER is half of one)
SECRET_NAME = re.compile(r"PASSWORD|SECRET|KEY|TOKEN|BASIC_AUTH|^MINIO_ROOT_")
# the only service published on every interface: it asks for a token itself
PUBLIC_SERVICES = {"web"}
LOOPBACK = {"127.0.0.1", "::1", "[::1]", "localhost"}


def _markers() -> dict[str, str]:
    """Each required variable set to a recognisable stand-in: ``__NAME__``."""
    return {name: f"__{name}__" for name in required_variables(raw_compose())}


def _is_marker(value: object) -> bool:
    return isinstance(value, str) and re.fullmatch(r"__[A-Z0-9_]+__", value) is not None


def _environments(data: dict) -> dict[str, dict]:
    """Every environment mapping: each service's, and the shared ``x-`` blocks."""
    found = {name: service.get("environment") or {} for name, service in data["services"].items()}
    for key, value in data.items():
        if key.startswith("x-") and isinstance(value, dict):
            found[key] = value.get("environment", value)
    for name, env in found.items():
        assert isinstance(env, dict), f"{name}: write environment as a mapping"
    return found


def _host_ips(service: dict) -> list[str | None]:
    """The host address each published port binds (None: every interface)."""
    ips = []
    for port in service.get("ports", []):
        if isinstance(port, dict):  # long syntax
            ips.append(port.get("host_ip"))
            continue
        spec = str(port).split("/")[0]
        if spec.startswith("["):  # [::1]:5555:5555
            ips.append(spec[: spec.index("]") + 1])
            continue
        parts = spec.split(":")
        ips.append(parts[0] if len(parts) == 3 else None)
    return ips


def test_no_secret_is_written_in_the_compose_file():
    """Credentials are required variables; a URL's password or mc's login are no literals."""
    data = render(raw_compose(), _markers())
    for where, env in _environments(data).items():
        for key, value in env.items():
            if SECRET_NAME.search(key):
                assert _is_marker(value), (
                    f"{where}: {key} is {value!r}, not a required ${{NAME:?...}} variable"
                )
    for text in strings(data):
        for url in re.findall(r"[a-z][a-z0-9+.-]*://[^\s\"']+", text):
            password = urlsplit(url).password
            assert password is None or _is_marker(password), f"a password in {url}"
    for name, service in data["services"].items():
        command = service.get("command") or []
        words = shlex.split(command if isinstance(command, str) else " ".join(command))
        assert "alias" not in words, f"{name}: mc's login on a command line; use MC_HOST_<alias>"


def test_compose_refuses_to_start_without_the_env_file():
    required = required_variables(raw_compose())
    assert {"SECRET_KEY", "POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD"} <= required
    with pytest.raises(MissingVariable):
        render(raw_compose(), {})


def test_auth_is_on_with_secrets_from_the_env_file(monkeypatch):
    """Every service that reads the settings runs with tokens and the .env's keys."""
    env = {name: f"value-of-{name}" for name in _markers()}
    services = compose(env)["services"]
    readers = [n for n, s in services.items() if "ATELIER_DATABASE_URL" in s.get("environment", {})]
    assert "web" in readers
    for name in readers:
        with monkeypatch.context() as patch:
            for key, value in services[name]["environment"].items():
                patch.setenv(key, str(value))
            settings = load_settings()
        assert settings.auth == "token", name
        assert settings.secret_key == env["SECRET_KEY"], name
        assert settings.webhook_secret == env["WEBHOOK_SECRET"], name
        assert settings.metrics_token == env["METRICS_TOKEN"], name
        assert settings.database_url.endswith(
            f"atelier:{env['POSTGRES_PASSWORD']}@postgres:5432/atelier"
        )


def test_only_the_web_is_published_beyond_the_hosts_loopback():
    """Flower, MinIO's API and console, Redis, PostgreSQL: the compose network or 127.0.0.1."""
    services = compose()["services"]
    assert all(ip in LOOPBACK for ip in _host_ips(services["flower"])), "flower"
    assert all(ip in LOOPBACK for ip in _host_ips(services["minio"])), "minio"
    for name, service in services.items():
        assert service.get("network_mode") != "host", f"{name} shares the host's network"
        if name not in PUBLIC_SERVICES:
            assert all(ip in LOOPBACK for ip in _host_ips(service)), f"{name} is published"
    assert services["web"]["environment"]["ATELIER_AUTH"] == "token"


def test_flower_asks_for_a_password_and_holds_no_other_secret():
    data = render(raw_compose(), _markers())
    flower = data["services"]["flower"]
    command = " ".join(flower["command"])
    option = re.search(r"--basic[-_]auth[= ](\S+)", command)
    login = option.group(1) if option else flower.get("environment", {}).get("FLOWER_BASIC_AUTH")
    assert _is_marker(login), f"Flower's basic auth is {login!r}, not from a variable"
    # it only watches the broker: a leak through Flower must not open the data
    others = {k for k in flower.get("environment", {}) if SECRET_NAME.search(k)}
    assert others <= {"FLOWER_BASIC_AUTH"}, others
    assert "ATELIER_DATABASE_URL" not in flower.get("environment", {})


def _make_env(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(MAKE_ENV), str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )


def test_make_env_writes_every_required_variable_privately_and_randomly(tmp_path):
    first, second = tmp_path / "a" / ".env", tmp_path / "b" / ".env"
    first.parent.mkdir()
    second.parent.mkdir()
    _make_env(first)
    _make_env(second)
    assert stat.S_IMODE(first.stat().st_mode) == 0o600
    values = read_env_file(first)
    # exactly what compose requires: nothing missing, nothing stale
    assert set(values) == required_variables(raw_compose())
    assert all(len(value) >= 16 for value in values.values()), values.keys()
    assert len(set(values.values())) == len(values), "two variables share a value"
    other = read_env_file(second)
    assert not set(values.values()) & set(other.values()), "values repeat across runs"

    services = compose(values)["services"]  # compose starts with it, and the parts agree
    env = services["web"]["environment"]
    database = urlsplit(env["ATELIER_DATABASE_URL"])
    assert database.password == services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    minio = services["minio"]["environment"]
    assert env["AWS_ACCESS_KEY_ID"] == minio["MINIO_ROOT_USER"]
    assert env["AWS_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"]
    mc = urlsplit(services["minio-init"]["environment"]["MC_HOST_local"])
    assert (mc.username, mc.password) == (minio["MINIO_ROOT_USER"], minio["MINIO_ROOT_PASSWORD"])
    user, _, password = services["flower"]["environment"]["FLOWER_BASIC_AUTH"].partition(":")
    assert user and len(password) >= 16 and "," not in password  # Flower splits on commas


def test_make_env_never_changes_an_existing_value(tmp_path):
    path = tmp_path / ".env"
    _make_env(path)
    before = path.read_bytes()
    _make_env(path)
    assert path.read_bytes() == before

    # an older .env: a value of the operator's own, one variable missing
    path.write_text("SECRET_KEY=kept-as-it-is\n# a note\nMETRICS_TOKEN=mine-too\n")
    path.chmod(0o600)
    _make_env(path)
    values = read_env_file(path)
    assert path.read_text().startswith(
        "SECRET_KEY=kept-as-it-is\n# a note\nMETRICS_TOKEN=mine-too\n"
    )
    assert values["SECRET_KEY"] == "kept-as-it-is" and values["METRICS_TOKEN"] == "mine-too"
    assert set(values) == required_variables(raw_compose())
    appended = path.read_bytes()
    _make_env(path)
    assert path.read_bytes() == appended
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_env_file_stays_out_of_git_and_the_image():
    root = MAKE_ENV.parent.parent
    for name in (".gitignore", ".dockerignore"):
        assert ".env" in (root / name).read_text().split(), name
    makefile = (root / "Makefile").read_text()
    assert re.search(r"^compose-env:", makefile, re.M) and "deploy/make_env.py" in makefile


def test_make_env_output_never_prints_a_secret(tmp_path):
    """The generator's message can end up in CI logs: it names variables, not values."""
    path = tmp_path / ".env"
    out = _make_env(path).stdout
    for value in read_env_file(path).values():
        assert value not in out
