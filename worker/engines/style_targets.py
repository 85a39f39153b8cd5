"""Style Gram targets with a small in-process LRU shared across calls.

A worker typically sees the same few style images again and again (presets, galleries,
re-runs with another seed), and a style's Grams at a given size are by far the cheapest
thing to keep: about 2.4 MB for all five layers.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch
from PIL import Image

from .losses import gram

MAX_ENTRIES = 32

_lock = threading.Lock()
_cache: OrderedDict[Hashable, dict[str, torch.Tensor]] = OrderedDict()


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
    key = (key, layers)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    with torch.no_grad():
        feats = features(make_input(), frozenset(layers))
        grams = {layer: gram(feats[layer]) for layer in layers}
    with _lock:
        _cache[key] = grams
        while len(_cache) > MAX_ENTRIES:
            _cache.popitem(last=False)
    return grams


def clear() -> None:
    with _lock:
        _cache.clear()
