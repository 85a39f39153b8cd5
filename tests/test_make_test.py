"""`make test` on a fresh machine: it finds or installs Chromium itself, the way CI does.

The browser tests used to rely on `.ci/run` installing Chromium, so the README's
`make test` failed on a machine without `/usr/bin/chromium`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.conftest import ROOT

SCRIPT = ROOT / ".ci" / "chromium.sh"


def _bin_dir(tmp_path: Path, **links: str) -> Path:
    """A PATH folder holding only the tools named (name -> real program)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name in ("bash", "id", *links):
        target = links.get(name) or shutil.which(name)
        assert target, name
        (folder / name).symlink_to(target)
    return folder


def _run(path: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [shutil.which("bash"), str(SCRIPT)],
        env={"PATH": str(path), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_make_test_runs_the_chromium_step_before_pytest():
    dry = subprocess.run(
        ["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert dry.returncode == 0, dry.stderr
    step, tests = dry.stdout.find(".ci/chromium.sh"), dry.stdout.find("-m pytest")
    assert 0 <= step < tests, dry.stdout
    assert "ATELIER_TEST_CHROMIUM" in dry.stdout


def test_ci_takes_the_same_step_through_make_test():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
    assert "apt-get install" not in ci  # no second copy of the install step


def test_the_step_finds_a_browser_on_path(tmp_path):
    folder = _bin_dir(tmp_path, **{"chromium-browser": shutil.which("true")})
    found = _run(folder)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == str(folder / "chromium-browser")


def test_the_step_honours_an_explicit_browser(tmp_path):
    folder = _bin_dir(tmp_path)
    given = _run(folder, ATELIER_TEST_CHROMIUM=shutil.which("true"))
    assert given.returncode == 0 and given.stdout.strip() == shutil.which("true")


def test_without_a_browser_or_a_way_to_install_one_it_says_what_to_do(tmp_path):
    missing = _run(_bin_dir(tmp_path))  # no chromium, no apt-get on PATH
    assert missing.returncode == 1
    assert "apt-get install chromium" in missing.stderr
    assert "ATELIER_TEST_CHROMIUM" in missing.stderr


def test_the_browser_fixture_uses_what_the_step_found(monkeypatch):
    from tests.browser.conftest import CHROMIUM_NAMES, find_chromium

    monkeypatch.setenv("ATELIER_TEST_CHROMIUM", shutil.which("true"))
    assert find_chromium() == shutil.which("true")
    monkeypatch.setenv("ATELIER_TEST_CHROMIUM", "/nonexistent/chromium")
    on_path = next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    assert find_chromium() == on_path
    assert os.access(SCRIPT, os.X_OK)
