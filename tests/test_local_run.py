"""The local commands' shared exit codes, progress bar and spec-built options."""

from __future__ import annotations

import argparse
import io
from types import SimpleNamespace

import pytest

from shared.kinds.spec import KindSpec, Param
from shared.queue import GPU_QUEUE
from worker.engines.errors import Canceled, InvalidInput, OutOfMemory
from worker.local_run import ProgressBar, add_spec_options, run_engine, spec_values


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


def _toy_spec() -> KindSpec:
    return KindSpec(
        name="toy",
        title="Toy",
        queue=GPU_QUEUE,
        doc="a kind for this test",
        files=(),
        params=(
            Param("steps", "int", "how many", default=3, minimum=1, maximum=9),
            Param("mode", "choice", "how", default="a", choices=("a", "b")),
            Param("fancy", "bool", "whether", default=True),
            Param("mix", "floats", "blend", minimum=0.0, maximum=1e6),
            Param("parts", "choices", "which", default=("x",), choices=("x", "y")),
            Param("label", "choice", "runner's", default="p", choices=("p",), engine=False),
        ),
    )


def test_spec_options_parse_like_the_server_and_skip_runner_params(capsys):
    spec = _toy_spec()
    parser = argparse.ArgumentParser()
    add_spec_options(parser, spec)
    defaults = spec_values(parser.parse_args([]), spec)
    assert defaults == {"steps": 3, "mode": "a", "fancy": True, "mix": None, "parts": ["x"]}
    given = parser.parse_args(["--steps", "9", "--mode", "B", "--no-fancy", "--mix", "1, 2"])
    expected = {"steps": 9, "mode": "b", "fancy": False, "mix": [1.0, 2.0], "parts": ["x"]}
    assert spec_values(given, spec) == expected
    assert "--label" not in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["--steps", "10"])
    assert "--steps: steps value must be between 1 and 9" in capsys.readouterr().err
