"""What the local engine commands (``atelier stylize``, ``atelier finetune``) share.

Both draw the same throttled one-line progress bar and turn an engine's outcome into the
same exit codes (0 done, 1 engine fault, 2 bad input, 130 canceled), so scripts can rely
on them whichever command they call.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

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
