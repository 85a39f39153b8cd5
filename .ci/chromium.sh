#!/usr/bin/env bash
# Find Chromium for the browser tests, installing Debian's package when it is missing.
# `make test` runs this before pytest and .ci/run runs `make test`, so a fresh machine and
# CI take the same step. Playwright never downloads a browser of its own.
# Prints the browser's path; exits non-zero, saying what to do, when none can be had.
set -euo pipefail

locate() {
  if [ -n "${ATELIER_TEST_CHROMIUM:-}" ] && [ -x "$ATELIER_TEST_CHROMIUM" ]; then
    echo "$ATELIER_TEST_CHROMIUM"
    return 0
  fi
  for name in chromium chromium-browser google-chrome-stable google-chrome; do
    if command -v "$name" >/dev/null 2>&1; then
      command -v "$name"
      return 0
    fi
  done
  return 1
}

if locate; then
  exit 0
fi

if command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    as_root=()
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
  else
    as_root=()
    echo "chromium.sh: Chromium is missing and apt-get needs root" >&2
  fi
  if [ "$(id -u)" = 0 ] || [ ${#as_root[@]} -gt 0 ]; then
    echo "chromium.sh: installing Debian's chromium for the browser tests" >&2
    "${as_root[@]}" apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -q chromium >&2
    if locate; then
      exit 0
    fi
  fi
fi

echo "chromium.sh: no Chromium found for the browser tests (tests/browser)." >&2
echo "  Install it (Debian/Ubuntu: sudo apt-get install chromium) or point" >&2
echo "  ATELIER_TEST_CHROMIUM at a Chromium or Chrome binary, then run make test again." >&2
exit 1
