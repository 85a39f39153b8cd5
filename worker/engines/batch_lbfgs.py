"""L-BFGS on a batch of independent images: B single-image runs as one tensor program.

A GPU step on one 512 px image leaves most of the card idle; B same-shape jobs through
VGG as one batch fill it.  For that to change no job's result, the optimiser must treat
each sample as its own problem: the closure returns one loss per sample (each a function
of its own image only, so the gradient of their sum is the stack of per-sample
gradients), and every quantity of ``lbfgs.py``'s single-sample optimiser gains a leading
batch dimension: history pairs ``(B, m, n)``, ρ ``(B, m)``, the initial Hessian scale
``(B,)``, the first step's ``min(1, 1/‖g‖₁)`` and the "does it descend" test per sample.
A batch of one takes exactly the single optimiser's steps, up to the rounding of a
batched dot product against ``Tensor.dot``.

Per-sample convergence (optional, off by default like the single optimiser, whose
budget is fixed): a sample whose gradient or step falls under its tolerance is marked
``done`` and stops moving, without a host sync.  A finished or canceled sample leaves
the batch through :meth:`BatchLBFGS.keep`, which drops its rows from every buffer, so
the remaining samples go on exactly as if it had never been there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .lbfgs import CURVATURE_EPS


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot product of two (B, n) tensors: (B,)."""
    return torch.linalg.vecdot(a, b)


class BatchLBFGS:
    """Minimise per-sample losses over ``param`` (B, ...), each sample on its own.

    ``closure(x)`` gets the current batch (a leaf that requires grad) and returns a
    ``(B,)`` tensor of per-sample losses; it must not call ``backward`` itself.  After
    :meth:`keep` the batch is a new tensor, read it from :attr:`param`.
    """

    def __init__(
        self,
        param: torch.Tensor,
        history_size: int,
        lr: float = 1.0,
        *,
        tolerance_grad: float | None = None,
        tolerance_change: float | None = None,
    ) -> None:
        if history_size < 1:
            raise ValueError("history_size must be at least 1")
        if param.dim() < 1 or param.shape[0] < 1:
            raise ValueError("param needs a leading batch dimension of at least one sample")
        self.param = param.detach().requires_grad_(True)
        self.lr = lr
        self.size = history_size
        self.tolerance_grad = tolerance_grad
        self.tolerance_change = tolerance_change
        batch, n = param.shape[0], param[0].numel()
        self.steps = param.new_zeros((batch, history_size, n))  # s_i per sample
        self.grads = param.new_zeros((batch, history_size, n))  # y_i per sample
        self.rho = param.new_zeros((batch, history_size))  # 0 marks a rejected pair
        self.h_diag = param.new_ones(batch)
        self.done = torch.zeros(batch, dtype=torch.bool, device=param.device)
        self.count = 0  # pairs held; every sample steps together, so one count for all
        self.head = 0
        self.prev_grad: torch.Tensor | None = None
        self.prev_step: torch.Tensor | None = None

    @property
    def batch(self) -> int:
        return self.param.shape[0]

    def step(self, closure: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Evaluate the losses once, move every unfinished sample once; return the losses."""
        x = self.param
        x.grad = None
        with torch.enable_grad():
            losses = closure(x)
            if losses.shape != (self.batch,):
                raise ValueError(
                    f"the closure must return one loss per sample, shape ({self.batch},); "
                    f"got {tuple(losses.shape)}"
                )
            (grad,) = torch.autograd.grad(losses.sum(), x)
        grad = grad.detach().reshape(self.batch, -1)
        with torch.no_grad():
            if self.prev_grad is None:
                direction = grad.neg()
                scale = (1.0 / grad.abs().sum(dim=1)).clamp(max=1.0) * self.lr
            else:
                self._remember(grad)
                direction = self._direction(grad)
                scale = torch.full_like(self.h_diag, self.lr)
            if self.tolerance_grad is not None:
                self.done |= grad.abs().amax(dim=1) <= self.tolerance_grad
            moves = (_dot(grad, direction) < 0) & ~self.done
            step = direction.mul_((scale * moves.to(grad.dtype)).unsqueeze(1))
            x.add_(step.view_as(x))
            if self.tolerance_change is not None:
                self.done |= step.abs().amax(dim=1) <= self.tolerance_change
        self.prev_grad, self.prev_step = grad, step
        return losses.detach()

    def keep(self, samples: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Keep only ``samples`` (indices, in the order given) and return the new batch.

        Everything per sample is indexed along its batch dimension, so a kept sample's
        next steps are exactly those it would have taken in the full batch.
        """
        index = torch.as_tensor(samples, dtype=torch.long, device=self.param.device)
        if index.dim() != 1 or index.numel() == 0:
            raise ValueError("keep needs at least one sample index")
        self.param = self.param.detach().index_select(0, index).requires_grad_(True)
        self.steps = self.steps.index_select(0, index)
        self.grads = self.grads.index_select(0, index)
        self.rho = self.rho.index_select(0, index)
        self.h_diag = self.h_diag.index_select(0, index)
        self.done = self.done.index_select(0, index)
        if self.prev_grad is not None and self.prev_step is not None:
            self.prev_grad = self.prev_grad.index_select(0, index)
            self.prev_step = self.prev_step.index_select(0, index)
        return self.param

    def _remember(self, grad: torch.Tensor) -> None:
        assert self.prev_grad is not None and self.prev_step is not None
        y = grad - self.prev_grad
        s = self.prev_step
        ys = _dot(y, s)
        curved = ys > CURVATURE_EPS
        slot = self.head
        self.steps[:, slot].copy_(s)
        self.grads[:, slot].copy_(y)
        self.rho[:, slot] = torch.where(curved, 1.0 / ys, torch.zeros_like(ys))
        self.h_diag = torch.where(curved, ys / _dot(y, y), self.h_diag)
        self.head = (self.head + 1) % self.size
        self.count = min(self.count + 1, self.size)

    def _direction(self, grad: torch.Tensor) -> torch.Tensor:
        """Two-loop recursion per sample: −H·g from each sample's own pairs, newest first."""
        order = [(self.head - 1 - k) % self.size for k in range(self.count)]
        q = grad.neg()
        alphas = []
        for i in order:
            alpha = _dot(self.steps[:, i], q) * self.rho[:, i]
            q.addcmul_(self.grads[:, i], alpha.unsqueeze(1), value=-1)
            alphas.append(alpha)
        r = q.mul_(self.h_diag.unsqueeze(1))
        for i, alpha in zip(reversed(order), reversed(alphas), strict=True):
            beta = _dot(self.grads[:, i], r) * self.rho[:, i]
            r.addcmul_(self.steps[:, i], (alpha - beta).unsqueeze(1))
        return r
