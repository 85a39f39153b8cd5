"""The linear probe's head: logistic regression on cached features, its L2 chosen by CV.

Why not the epoch loop with AdamW and early stopping on the validation split: that picks
the head by the very images that then report its accuracy, and on ~50 validation images
the pick is noise (0.84–0.94 across seeds on ants vs. bees). Here the head is the
exact minimiser of ``cross-entropy + λ/2·‖W‖²`` on standardised features (full-batch
L-BFGS, deterministic), ``λ`` is chosen by stratified k-fold cross-validation on the
training images alone (cheap: the features are cached, only the head is refitted), and
the head is then refitted on every training image. The validation images only report on
that head; the job then refits the head it ships, with the same λ, on train + val.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

# λ on the mean loss, on standardised features; hundreds of features vs. ~200 images wants
# strong shrinkage, so the grid reaches well above 1 (ants vs. bees: best 1–10).
L2_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
MAX_FOLDS = 5
CV_ROUNDS = 15  # L-BFGS rounds per CV fit: converged to well under a CV point by then
LBFGS_STEPS_PER_ROUND = 5


class Standardize(nn.Module):
    """Feature standardisation fitted on the training set, saved with the head."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def fit(self, feats: torch.Tensor) -> Standardize:
        """Mean and a shrunk std of ``feats``: each variance is pulled toward the average one,
        so a unit that never fires on the training images (std 0) cannot blow up on a
        new image where it does."""
        var = feats.var(0) if len(feats) > 1 else torch.ones(feats.shape[1])
        self.mean.copy_(feats.mean(0))
        self.std.copy_((var + 0.1 * var.mean() + 1e-6).sqrt())
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def make_head(dim: int, classes: int) -> nn.Sequential:
    """Standardize + Linear: the head every strategy trains and every checkpoint holds."""
    return nn.Sequential(Standardize(dim), nn.Linear(dim, classes))


def stratified_folds(labels: torch.Tensor, k: int, seed: int) -> list[torch.Tensor]:
    """``k`` disjoint index sets, each class dealt round-robin after a seeded shuffle."""
    gen = torch.Generator().manual_seed(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    offset = 0
    for label in labels.unique().tolist():
        idx = (labels == label).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        for j, i in enumerate(idx.tolist()):
            folds[(offset + j) % k].append(i)
        offset += len(idx)  # small classes do not all land in fold 0
    return [torch.tensor(sorted(f), dtype=torch.long) for f in folds]


def fit_logistic(
    head: nn.Sequential,
    feats: torch.Tensor,
    labels: torch.Tensor,
    l2: float,
    rounds: int,
    label_smoothing: float = 0.0,
    on_round: Callable[[int, float], None] | None = None,
) -> nn.Sequential:
    """Fit ``head`` (standardisation, then weights) by full-batch L-BFGS from zero weights.

    ``rounds`` × :data:`LBFGS_STEPS_PER_ROUND` iterations at most; ``on_round(round,
    train loss)`` after each, for progress and curves. Zero start + L-BFGS on one thread:
    the same inputs give the same head on any machine, and ops this small only pay
    threads' overhead (on 2 busy cores a 244-image fit took 3–7 s on 2 threads, 0.6 s on
    one).
    """
    feats, labels = feats.clone(), labels.clone()  # cached under inference_mode: not autograd's
    head[0].fit(feats)
    linear: nn.Linear = head[1]
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.zero_()
    x = head[0](feats).detach()
    optimizer = torch.optim.LBFGS(
        linear.parameters(),
        lr=1.0,
        max_iter=LBFGS_STEPS_PER_ROUND,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-7,
        tolerance_change=1e-10,
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(linear(x), labels, label_smoothing=label_smoothing)
        loss = loss + 0.5 * l2 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.enable_grad():
            for r in range(1, rounds + 1):
                loss = float(optimizer.step(closure).detach())
                if on_round is not None:
                    on_round(r, loss)
    finally:
        torch.set_num_threads(threads)
    return head


@dataclass
class CVChoice:
    """What cross-validation chose, recorded in metrics.json."""

    l2: float
    folds: int
    scores: list[dict] = field(default_factory=list)  # per λ: mean accuracy and loss
    reason: str = ""

    def record(self) -> dict:
        return {"l2": self.l2, "folds": self.folds, "scores": self.scores, "reason": self.reason}


def cv_folds(labels: torch.Tensor) -> int:
    """Folds for cross-validation: up to :data:`MAX_FOLDS`, at most the smallest class."""
    counts = torch.bincount(labels)
    return min(MAX_FOLDS, int(counts[counts > 0].min()))


def choose_l2(
    feats: torch.Tensor,
    labels: torch.Tensor,
    classes: int,
    seed: int,
    rounds: int,
    grid: tuple[float, ...] = L2_GRID,
    on_fit: Callable[[], None] | None = None,
) -> CVChoice:
    """λ with the lowest mean held-out log-loss over stratified folds (ties: larger λ).

    Log-loss rather than accuracy: on folds of ~40 images accuracy moves in 2.5-point
    steps and ties across half the grid, the loss ranks every λ. ``on_fit`` runs after
    each of the ``len(grid) × folds`` fits (progress; may raise to cancel).
    """
    k = cv_folds(labels)
    if k < 2:
        middle = grid[len(grid) // 2]
        return CVChoice(middle, 0, reason="a class has one training image: no folds")
    folds = stratified_folds(labels, k, seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ops this small only pay threads' overhead (2x slower on 2)
    try:
        scores = [_cv_score(feats, labels, classes, folds, l2, rounds, on_fit) for l2 in grid]
    finally:
        torch.set_num_threads(threads)
    best = min(scores, key=lambda s: (s["cv_loss"], -s["l2"]))
    return CVChoice(
        best["l2"], k, scores, reason=f"lowest mean held-out loss over {k} stratified folds"
    )


def _cv_score(
    feats: torch.Tensor,
    labels: torch.Tensor,
    classes: int,
    folds: list[torch.Tensor],
    l2: float,
    rounds: int,
    on_fit: Callable[[], None] | None,
) -> dict:
    """Mean held-out loss and accuracy of ``l2`` over ``folds``."""
    k = len(folds)
    losses, accs = [], []
    for held in folds:
        keep = torch.ones(len(labels), dtype=torch.bool)
        keep[held] = False
        head = make_head(feats.shape[1], classes)
        fit_logistic(head, feats[keep], labels[keep], l2, min(rounds, CV_ROUNDS))
        with torch.no_grad():
            logits = head(feats[held])
        losses.append(F.cross_entropy(logits, labels[held]).item())
        accs.append((logits.argmax(1) == labels[held]).float().mean().item())
        if on_fit is not None:
            on_fit()
    return {
        "l2": l2,
        "cv_loss": round(sum(losses) / k, 5),
        "cv_accuracy": round(sum(accs) / k, 5),
        "cv_accuracy_std": round(_std(accs), 5),
    }


def _std(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
