"""Style Gram targets with a small in-process LRU shared across calls.

A worker typically sees the same few style images again and again (presets, galleries,
re-runs with another seed), and a style's Grams at a given size are by far the cheapest
thing to keep: about 2.4 MB for all five layers.  The histogram loss's quantile tables
(losses.HISTOGRAM_POINTS per channel, about 0.6 MB) are kept beside them, taken from the
same forward pass.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch
from PIL import Image

from .losses import gram, quantile_table

MAX_ENTRIES = 32

_lock = threading.Lock()
_Statistics = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]
_cache: OrderedDict[Hashable, _Statistics] = OrderedDict()


def image_digest(image: Image.Image) -> str:
    """Content hash of a PIL image (pixels, size and mode) for cache keys."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{image.mode}:{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def style_grams(
    key: Hashable,
    make_input: Callable[[], torch.Tensor],
    features: Callable[[torch.Tensor, frozenset[str]], dict[str, torch.Tensor]],
    layers: tuple[str, ...],
) -> dict[str, torch.Tensor]:
    """The style Grams at ``layers`` for ``key``; computed from ``make_input()`` on a miss."""
    return style_statistics(key, make_input, features, layers)[0]


def style_statistics(
    key: Hashable,
    make_input: Callable[[], torch.Tensor],
    features: Callable[[torch.Tensor, frozenset[str]], dict[str, torch.Tensor]],
    layers: tuple[str, ...],
    histogram_layers: tuple[str, ...] = (),
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The style Grams at ``layers`` and quantile tables at ``histogram_layers``.

    Both come from one forward pass of ``make_input()`` on a miss.
    """
    key = (key, layers, histogram_layers)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    with torch.no_grad():
        feats = features(make_input(), frozenset(layers) | frozenset(histogram_layers))
        grams = {layer: gram(feats[layer]) for layer in layers}
        tables = {layer: quantile_table(feats[layer]) for layer in histogram_layers}
    with _lock:
        _cache[key] = (grams, tables)
        while len(_cache) > MAX_ENTRIES:
            _cache.popitem(last=False)
    return grams, tables


def clear() -> None:
    with _lock:
        _cache.clear()
