"""PyTorch's own CPU convolution for tests that compare batched with lone style runs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def native_conv() -> Iterator[None]:
    """oneDNN off: PyTorch's native CPU convolution computes each image of a batch as it
    computes it alone, so a batched run differs from its lone runs only in rounding."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before
