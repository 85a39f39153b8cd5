"""A style run stopped part-way and resumed from its checkpoint ends in the same image,
bit for bit, as one that was never stopped (CPU, one thread, fixed seed, real VGG)."""

from __future__ import annotations

import io
import logging

import pytest
import torch

from worker.engines import checkpoint as checkpoints
from worker.engines.errors import Canceled
from worker.engines.style_transfer import StyleParams, StyleProgress, StyleResult, stylize

from .conftest import make_content, make_style

# 48 px, three scales (24, 34, 48 px long side) of 7, 3 and 2 steps
RUN = {"size": 48, "iterations": 12, "multiscale": True, "seed": 7, "device": "cpu"}


class Stop(Canceled):
    """What a worker's callback raises to stop the engine (a drain, a cancel)."""


def _params(optimizer: str) -> StyleParams:
    return StyleParams.resolve(1, optimizer=optimizer, init="noise", **RUN)


def _run(
    optimizer: str,
    *,
    stop_after: int | None = None,
    checkpoint: bytes | None = None,
    **checkpointing,
) -> tuple[StyleResult | None, list[bytes]]:
    """One run; ``stop_after`` raises from the callback after that run step.  Returns
    the result (None when stopped) and the checkpoints it handed out, in order."""
    saved: list[bytes] = []

    def on_progress(progress: StyleProgress) -> None:
        if stop_after is not None and progress.step == stop_after:
            raise Stop("stopped for the test")

    try:
        result = stylize(
            make_content(),
            [make_style()],
            _params(optimizer),
            on_progress=on_progress,
            checkpoint=checkpoint,
            on_checkpoint=saved.append,
            **checkpointing,
        )
    except Stop:
        return None, saved
    return result, saved


def _position(data: bytes) -> tuple[int, int]:
    state = torch.load(io.BytesIO(data), weights_only=True)
    return state["scale"], state["step"]


def _pixels(result: StyleResult) -> torch.Tensor:
    return torch.frombuffer(bytearray(result.image.tobytes()), dtype=torch.uint8)


@pytest.fixture(scope="module", params=["lbfgs", "adam"])
def uninterrupted(request) -> tuple[str, StyleResult]:
    torch.manual_seed(0)
    result, saved = _run(request.param, checkpoint_seconds=3600.0)
    assert result is not None
    # scale boundaries only: the starts of scales 2 and 3
    assert [_position(data) for data in saved] == [(1, 0), (2, 0)]
    return request.param, result


@pytest.mark.parametrize(
    ("stop_after", "every", "resume_at"),
    [
        (5, 2, (0, 4)),  # mid scale 1: the checkpoint after step 4 of 7
        (9, 1, (1, 2)),  # mid scale 2: after its 2nd of 3 steps
        (9, 5, (1, 0)),  # the boundary checkpoint at the start of scale 2
    ],
)
def test_stopped_and_resumed_run_matches_uninterrupted(uninterrupted, stop_after, every, resume_at):
    optimizer, whole = uninterrupted
    stopped, saved = _run(optimizer, stop_after=stop_after, checkpoint_steps=every)
    assert stopped is None and saved
    last = saved[-1]
    assert _position(last) == resume_at
    torch.manual_seed(123)  # the global RNG state comes back from the checkpoint
    resumed, _ = _run(optimizer, checkpoint=last, checkpoint_steps=every)
    assert resumed is not None
    assert torch.equal(_pixels(resumed), _pixels(whole))
    assert resumed.metrics["losses"] == whole.metrics["losses"]
    assert [s["size"] for s in resumed.metrics["scales"]] == [
        s["size"] for s in whole.metrics["scales"]
    ]
    scale, step = resume_at
    assert resumed.metrics["checkpoints"]["resumed_from"] == {"scale": scale + 1, "step": step}
    assert whole.metrics["checkpoints"]["resumed_from"] is None


def test_checkpoint_bytes_are_counted(uninterrupted):
    _, whole = uninterrupted
    counted = whole.metrics["checkpoints"]
    assert counted["count"] == 2 and counted["bytes"] > 0


def test_a_drained_run_can_checkpoint_the_step_it_stopped_at():
    """``StyleProgress.save_checkpoint`` (what a worker calls before handing a job back)
    saves the state after the current step, so no step is lost or repeated."""
    saved: list[bytes] = []

    def on_progress(progress: StyleProgress) -> None:
        if progress.step == 3:
            assert progress.save_checkpoint()
            raise Stop("drain")

    with pytest.raises(Stop):
        stylize(
            make_content(),
            [make_style()],
            _params("lbfgs"),
            on_progress=on_progress,
            on_checkpoint=saved.append,
            checkpoint_seconds=3600.0,
        )
    assert [_position(data) for data in saved] == [(0, 3)]


@pytest.mark.parametrize(
    "spoil",
    [
        lambda data: data[: len(data) // 2],  # truncated
        lambda data: b"not a checkpoint",
        lambda data: bytes(reversed(data)),
    ],
)
def test_corrupt_checkpoint_starts_over_and_finishes(uninterrupted, spoil, caplog):
    optimizer, whole = uninterrupted
    _, saved = _run(optimizer, stop_after=9, checkpoint_steps=1)
    with caplog.at_level(logging.WARNING, logger=checkpoints.__name__):
        result, _ = _run(optimizer, checkpoint=spoil(saved[-1]), checkpoint_seconds=3600.0)
    assert result is not None
    assert result.metrics["checkpoints"]["resumed_from"] is None
    assert torch.equal(_pixels(result), _pixels(whole))  # started over, same seed
    assert "starting over" in caplog.text


def test_another_runs_checkpoint_is_ignored(caplog):
    _, saved = _run("lbfgs", stop_after=9, checkpoint_steps=1)
    other = StyleParams.resolve(1, optimizer="lbfgs", init="noise", **{**RUN, "seed": 8})
    with caplog.at_level(logging.WARNING, logger=checkpoints.__name__):
        result = stylize(make_content(), [make_style()], other, checkpoint=saved[-1])
    assert result.metrics["checkpoints"]["resumed_from"] is None
    assert "another run" in caplog.text


def test_checkpointer_trigger_follows_its_clock_and_step_count():
    now = [0.0]
    timed = checkpoints.Checkpointer("x", lambda data: None, seconds=30, clock=lambda: now[0])
    assert not timed.due(1)
    now[0] = 30.0
    assert timed.due(2)
    every = checkpoints.Checkpointer("x", lambda data: None, seconds=30, steps=3)
    assert [every.due(step) for step in range(1, 7)] == [False, False, True] * 2
    always = checkpoints.Checkpointer("x", lambda data: None, seconds=0, clock=lambda: 5.0)
    assert always.due(1)
