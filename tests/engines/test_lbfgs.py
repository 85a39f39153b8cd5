"""The sync-free L-BFGS takes exactly torch.optim.LBFGS's steps (max_iter=1, no line search)."""

from __future__ import annotations

import pytest
import torch

from worker.engines.lbfgs import LBFGS


def _problem() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(40, 30, dtype=torch.float64, generator=generator)
    b = torch.randn(40, dtype=torch.float64, generator=generator)
    return a, b


def _run(make, steps: int = 40) -> tuple[torch.Tensor, list[float]]:
    a, b = _problem()
    x = torch.zeros(30, dtype=torch.float64, requires_grad=True)
    optimizer = make(x)

    def closure() -> torch.Tensor:
        x.grad = None
        loss = ((a @ x - b) ** 2).sum() + 0.1 * (x**4).sum()  # smooth, not quadratic
        loss.backward()
        return loss

    losses = [float(optimizer.step(closure).detach()) for _ in range(steps)]
    return x.detach(), losses


@pytest.mark.parametrize("history", [1, 5, 100])
def test_same_iterates_as_torch_lbfgs(history):
    ours_x, ours_losses = _run(lambda x: LBFGS(x, history))
    torch_x, torch_losses = _run(
        lambda x: torch.optim.LBFGS(
            [x], lr=1.0, max_iter=1, history_size=history, tolerance_grad=0, tolerance_change=0
        )
    )
    assert ours_losses == pytest.approx(torch_losses, rel=1e-9)
    assert torch.allclose(ours_x, torch_x, rtol=1e-9, atol=1e-12)
    assert ours_losses[-1] < 0.6 * ours_losses[0]  # and it really minimises


def test_flat_curvature_pairs_are_skipped_not_fatal():
    x = torch.zeros(3, requires_grad=True)
    optimizer = LBFGS(x, 4)

    def closure() -> torch.Tensor:  # a linear loss: y = 0 every step, no curvature
        x.grad = None
        loss = x.sum()
        loss.backward()
        return loss

    for _ in range(5):
        optimizer.step(closure)
    x = x.detach()
    assert torch.isfinite(x).all()
    assert float(optimizer.rho.abs().sum()) == 0.0  # every pair was rejected
    assert float(x.sum()) < 0  # yet it kept descending


def test_closure_must_produce_a_gradient():
    x = torch.zeros(2, requires_grad=True)
    with pytest.raises(RuntimeError, match="backward"):
        LBFGS(x, 2).step(lambda: x.sum().detach())
