"""The batched L-BFGS takes, for every sample, the steps the single-image optimiser takes."""

from __future__ import annotations

import pytest
import torch

from worker.engines.batch_lbfgs import BatchLBFGS
from worker.engines.lbfgs import LBFGS

BATCH = 3


def _problems() -> tuple[torch.Tensor, torch.Tensor]:
    """One smooth, non-quadratic least-squares problem per sample (float64)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(BATCH, 40, 30, dtype=torch.float64, generator=generator)
    b = torch.randn(BATCH, 40, dtype=torch.float64, generator=generator)
    return a, b


def _loss(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample loss of a (k, 40, 30), b (k, 40), x (k, 30): shape (k,)."""
    residual = torch.einsum("kij,kj->ki", a, x) - b
    return residual.pow(2).sum(1) + 0.1 * x.pow(4).sum(1)


def _single(sample: int, steps: int, history: int) -> tuple[torch.Tensor, list[float]]:
    a, b = _problems()
    x = torch.zeros(30, dtype=torch.float64, requires_grad=True)
    optimizer = LBFGS(x, history)

    def closure() -> torch.Tensor:
        x.grad = None
        loss = _loss(a[sample : sample + 1], b[sample : sample + 1], x.unsqueeze(0))[0]
        loss.backward()
        return loss

    losses = [float(optimizer.step(closure).detach()) for _ in range(steps)]
    return x.detach(), losses


def _batched_closure(samples: list[int]):
    a, b = _problems()

    def closure(x: torch.Tensor) -> torch.Tensor:
        return _loss(a[samples], b[samples], x)

    return closure


@pytest.mark.parametrize("history", [1, 5, 100])
def test_batch_of_one_takes_the_single_optimisers_steps(history):
    single_x, single_losses = _single(0, 40, history)
    optimizer = BatchLBFGS(torch.zeros(1, 30, dtype=torch.float64), history)
    closure = _batched_closure([0])
    losses = [float(optimizer.step(closure)[0]) for _ in range(40)]
    assert losses == pytest.approx(single_losses, rel=1e-9)
    assert torch.allclose(optimizer.param.detach()[0], single_x, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("history", [2, 100])
def test_each_sample_of_a_batch_matches_its_own_lone_run(history):
    optimizer = BatchLBFGS(torch.zeros(BATCH, 30, dtype=torch.float64), history)
    closure = _batched_closure(list(range(BATCH)))
    losses = torch.stack([optimizer.step(closure) for _ in range(40)])
    for sample in range(BATCH):
        single_x, single_losses = _single(sample, 40, history)
        assert losses[:, sample].tolist() == pytest.approx(single_losses, rel=1e-9)
        assert torch.allclose(optimizer.param.detach()[sample], single_x, rtol=1e-9, atol=1e-12)
        assert single_losses[-1] < 0.6 * single_losses[0]  # the problems really are solved


def test_a_sample_leaving_the_batch_leaves_the_others_untouched():
    optimizer = BatchLBFGS(torch.zeros(BATCH, 30, dtype=torch.float64), 5)
    for _ in range(10):
        optimizer.step(_batched_closure([0, 1, 2]))
    optimizer.keep([0, 2])  # sample 1 canceled after 10 steps
    assert optimizer.batch == 2
    for _ in range(30):
        optimizer.step(_batched_closure([0, 2]))
    for row, sample in enumerate([0, 2]):
        single_x, _ = _single(sample, 40, 5)
        assert torch.allclose(optimizer.param.detach()[row], single_x, rtol=1e-9, atol=1e-12)


def test_a_converged_sample_stops_while_the_others_go_on():
    # sample 0 starts at its minimum (zero gradient), the others far from theirs
    x = torch.zeros(BATCH, 30, dtype=torch.float64)
    optimizer = BatchLBFGS(x, 5, tolerance_grad=1e-6)

    def closure(x: torch.Tensor) -> torch.Tensor:
        targets = torch.tensor([0.0, 1.0, -2.0], dtype=torch.float64).unsqueeze(1)
        return (x - targets).pow(2).sum(1) + (x - targets).pow(4).sum(1)

    for _ in range(30):
        optimizer.step(closure)
    assert optimizer.done.tolist()[0] is True
    assert float(optimizer.param.detach()[0].abs().max()) == 0.0  # never moved
    final = closure(optimizer.param.detach())
    assert float(final[1:].max()) < 1e-6  # the others converged on their own


def test_the_closure_must_return_one_loss_per_sample():
    optimizer = BatchLBFGS(torch.zeros(2, 3), 2)
    with pytest.raises(ValueError, match="one loss per sample"):
        optimizer.step(lambda x: x.sum())
    with pytest.raises(ValueError, match="at least one sample"):
        optimizer.keep([])
