"""L-BFGS on one image tensor: one loss evaluation per step and no host-device syncs.

``torch.optim.LBFGS`` reads scalars back to Python on every step: a convergence test, the
curvature test, and one per history pair in its two-loop recursion (each coefficient
becomes a Python float to serve as ``alpha``).  On a GPU each read waits for the queue to
drain, so at 512 px the optimiser's bookkeeping, not VGG, set the pace.  Here every
coefficient stays a tensor and the history lives in two preallocated ``(m, n)`` buffers.
A pair that fails the curvature test (yᵀs ≤ 1e-10) is stored with ρ = 0, which makes it a
no-op in both loops: the same direction as skipping it, without a branch on the host.

The step rule is torch's with ``max_iter=1`` and no line search (as in Gatys et al.'s
reference code): the first step is scaled by ``min(1, 1/‖g‖₁)``, later ones take the
quasi-Newton direction at ``lr``, and a direction that does not descend is not taken.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

CURVATURE_EPS = 1e-10


class LBFGS:
    """Minimise ``closure()`` over ``param`` (its ``.grad`` set by the closure)."""

    def __init__(self, param: torch.Tensor, history_size: int, lr: float = 1.0) -> None:
        if history_size < 1:
            raise ValueError("history_size must be at least 1")
        self.param = param
        self.lr = lr
        self.size = history_size
        n = param.numel()
        self.steps = param.new_zeros((history_size, n))  # s_i = x_{i+1} - x_i
        self.grads = param.new_zeros((history_size, n))  # y_i = g_{i+1} - g_i
        self.rho = param.new_zeros(history_size)  # 1 / y_iᵀs_i, or 0 for a rejected pair
        self.h_diag = param.new_ones(())
        self.count = 0  # pairs held (≤ size)
        self.head = 0  # slot the next pair goes to
        self.prev_grad: torch.Tensor | None = None
        self.prev_step: torch.Tensor | None = None

    def step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Evaluate the loss once, move ``param`` once; return the loss (a tensor)."""
        with torch.enable_grad():
            loss = closure()
        if self.param.grad is None:
            raise RuntimeError("the closure must call backward() on the loss")
        grad = self.param.grad.detach().reshape(-1).clone()
        with torch.no_grad():
            if self.prev_grad is None:
                direction = grad.neg()
                scale = (1.0 / grad.abs().sum()).clamp(max=1.0) * self.lr
            else:
                self._remember(grad)
                direction = self._direction(grad)
                scale = self.lr
            descends = (grad.dot(direction) < 0).to(grad.dtype)
            step = direction.mul_(scale * descends)
            self.param.add_(step.view_as(self.param))
        self.prev_grad, self.prev_step = grad, step
        return loss

    def _remember(self, grad: torch.Tensor) -> None:
        assert self.prev_grad is not None and self.prev_step is not None
        y = grad - self.prev_grad
        s = self.prev_step
        ys = y.dot(s)
        curved = ys > CURVATURE_EPS
        slot = self.head
        self.steps[slot].copy_(s)
        self.grads[slot].copy_(y)
        self.rho[slot] = torch.where(curved, 1.0 / ys, torch.zeros_like(ys))
        self.h_diag = torch.where(curved, ys / y.dot(y), self.h_diag)
        self.head = (self.head + 1) % self.size
        self.count = min(self.count + 1, self.size)

    def _direction(self, grad: torch.Tensor) -> torch.Tensor:
        """Two-loop recursion: −H·g from the stored pairs, newest first."""
        order = [(self.head - 1 - k) % self.size for k in range(self.count)]
        q = grad.neg()
        alphas = []
        for i in order:
            alpha = self.steps[i].dot(q) * self.rho[i]
            q.addcmul_(self.grads[i], alpha, value=-1)
            alphas.append(alpha)
        r = q.mul_(self.h_diag)
        for i, alpha in zip(reversed(order), reversed(alphas), strict=True):
            beta = self.grads[i].dot(r) * self.rho[i]
            r.addcmul_(self.steps[i], alpha - beta)
        return r

    def state_dict(self) -> dict:
        """Everything the next step depends on (a checkpoint saves it; tensors are not
        copied here, the checkpoint's writer copies them)."""
        return {
            "size": self.size,
            "lr": self.lr,
            "steps": self.steps,
            "grads": self.grads,
            "rho": self.rho,
            "h_diag": self.h_diag,
            "count": self.count,
            "head": self.head,
            "prev_grad": self.prev_grad,
            "prev_step": self.prev_step,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict()`` output, history size included (the size a
        fresh optimiser would pick depends on the memory free now, not when it was saved)."""
        if state["steps"].shape[1] != self.param.numel():
            raise ValueError("the L-BFGS state is for an image of another size")
        device, dtype = self.param.device, self.param.dtype

        def move(value: torch.Tensor | None) -> torch.Tensor | None:
            return None if value is None else value.to(device=device, dtype=dtype, copy=True)

        self.size = int(state["size"])
        self.lr = float(state["lr"])
        self.steps = move(state["steps"])
        self.grads = move(state["grads"])
        self.rho = move(state["rho"])
        self.h_diag = move(state["h_diag"])
        self.count = int(state["count"])
        self.head = int(state["head"])
        self.prev_grad = move(state["prev_grad"])
        self.prev_step = move(state["prev_step"])
