"""What the local engine commands (``atelier stylize``, ``atelier finetune``) share.

Both build their job options from the kind's spec (shared/kinds/spec.py) the way the
server parses the same fields, draw the same throttled one-line progress bar and turn an
engine's outcome into the same exit codes (0 done, 1 engine fault, 2 bad input, 130
canceled), so scripts can rely on them whichever command they call.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

from shared.kinds.spec import KindSpec, Param
from worker.engines.errors import Canceled, EngineError

BAR_WIDTH = 30
REDRAW_SECONDS = 0.1  # at most ~10 redraws a second: a terminal is slower than a CPU step

EXIT_ENGINE_FAULT = 1
EXIT_INVALID_INPUT = 2
EXIT_CANCELED = 130  # what a shell reports for Ctrl-C

Result = TypeVar("Result")


class ProgressBar:
    """A one-line ``\\r`` progress bar on stderr; ``describe`` says what follows the bar."""

    def __init__(self, describe: Callable[[Any], str]) -> None:
        self.describe = describe
        self.stream = sys.stderr  # looked up per run, so a redirected stderr is honoured
        self.last = 0.0

    def __call__(self, progress: Any) -> None:
        now = time.monotonic()
        done = progress.step >= progress.total
        if not done and now - self.last < REDRAW_SECONDS:
            return
        self.last = now
        filled = round(BAR_WIDTH * progress.step / max(progress.total, 1))
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        self.stream.write(f"\r[{bar}] {self.describe(progress)}\x1b[K")
        if done:
            self.stream.write("\n")
        self.stream.flush()


def run_engine(call: Callable[[], Result]) -> tuple[Result | None, int]:
    """Run ``call``: ``(result, 0)``, or ``(None, exit code)`` after printing why not."""
    try:
        return call(), 0
    except EngineError as exc:
        print(f"\nerror ({exc.code}): {exc}", file=sys.stderr)
        return None, EXIT_INVALID_INPUT if exc.code == "invalid_input" else EXIT_ENGINE_FAULT
    except (KeyboardInterrupt, Canceled):
        print("\ncanceled", file=sys.stderr)
        return None, EXIT_CANCELED


def add_spec_options(
    parser: argparse.ArgumentParser, spec: KindSpec, local: tuple[str, ...] = ()
) -> None:
    """One ``--kebab-case`` option per engine param of ``spec`` and per param named in
    ``local`` (a job param the local command honours itself), parsed like the server.

    Values go through ``Param.cli_type`` (the absolute bounds, so a bad value exits 2
    naming the option before anything loads); bool params get ``--x/--no-x``.  A param
    without a fixed default stays None, which the engine resolves and records.
    """
    for param in spec.params:
        if not (param.engine or param.name in local):
            continue
        flag = "--" + param.name.replace("_", "-")
        default = list(param.default) if isinstance(param.default, tuple) else param.default
        text = _help(param, default)
        if param.type == "bool":
            action = argparse.BooleanOptionalAction
            parser.add_argument(flag, dest=param.name, action=action, default=default, help=text)
            continue
        options: dict[str, Any] = {"type": param.cli_type(), "default": default, "help": text}
        if param.type == "choice":
            options["choices"] = param.choices
        elif param.type in ("floats", "choices"):
            options["metavar"] = "W1,W2,..." if param.type == "floats" else "A,B,..."
        parser.add_argument(flag, dest=param.name, **options)


def _help(param: Param, default: Any) -> str:
    """The option's help: the spec's doc, its bounds or list choices, and the default."""
    text = param.doc + (f", {param.unit}" if param.unit else "")
    if param.type in ("int", "float", "floats"):
        low, high = (_number(param, v) for v in param.bounds())
        text += f"; {'each ' if param.type == 'floats' else ''}{low} to {high}"
    if param.type == "choices":
        text += f"; comma-separated from {', '.join(param.choices)}"
    if isinstance(default, list):
        text += f" (default: {','.join(map(str, default))})"
    elif isinstance(default, bool):
        text += f" (default: {'on' if default else 'off'})"
    elif default is not None:
        text += f" (default: {default})"
    if param.random:
        text += " (default: random, recorded)"
    return text.replace("%", "%%")


def _number(param: Param, value: float) -> str:
    """A bound as people write it: 4294967295 for an int, 1e9 for a float."""
    if param.type == "int":
        return str(int(value))
    return f"{value:g}".replace("e+0", "e").replace("e+", "e").replace("e-0", "e-")


def spec_values(args: argparse.Namespace, spec: KindSpec) -> dict[str, Any]:
    """The engine params of ``spec`` from options added by :func:`add_spec_options`."""
    return {p.name: getattr(args, p.name) for p in spec.params if p.engine}
