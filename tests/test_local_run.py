"""The local commands' shared exit codes and progress bar."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest

from worker.engines.errors import Canceled, InvalidInput, OutOfMemory
from worker.local_run import ProgressBar, run_engine


def _raise(exc: BaseException):
    def call():
        raise exc

    return call


@pytest.mark.parametrize(
    ("call", "code", "message"),
    [
        (lambda: "image", 0, ""),
        (_raise(InvalidInput("size must be at least 16", "size")), 2, "error (invalid_input)"),
        (_raise(OutOfMemory("needs 90 GiB")), 1, "error (out_of_memory)"),
        (_raise(Canceled()), 130, "canceled"),
        (_raise(KeyboardInterrupt()), 130, "canceled"),
    ],
)
def test_engine_outcomes_map_to_exit_codes(capsys, call, code, message):
    result, exit_code = run_engine(call)
    assert exit_code == code
    assert (result == "image") == (code == 0)
    assert message in capsys.readouterr().err


def test_progress_bar_skips_fast_redraws_but_always_draws_the_end():
    bar = ProgressBar(lambda p: f"{p.step}/{p.total}")
    bar.stream = io.StringIO()
    for step in range(1, 101):
        bar(SimpleNamespace(step=step, total=100))
    drawn = bar.stream.getvalue()
    assert drawn.count("\r[") < 10  # a hundred fast steps, a few redraws
    assert drawn.endswith("] 100/100\x1b[K\n") and "#" * 30 in drawn
