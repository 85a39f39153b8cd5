"""Colour tools: histogram matching of RGB images, without any network.

Two uses in the style engine:

* ``preserve_color=histogram`` recolours each style image to the content's colour
  histogram before its Gram targets are taken, so the run brings strokes and texture but
  keeps the photo's palette (``statistics`` only matches mean and covariance);
* ``color_only=true`` recolours the content to the styles' histogram and stops there: no
  VGG, no optimisation, a few sorts of the pixels.

Matching a 3-D colour histogram exactly is expensive; matching three 1-D histograms in
RGB mixes the channels up (a blue sky can turn purple).  Here the source is first mapped
affinely to the reference's mean and covariance, then each of the reference's principal
colour axes gets its 1-D histogram matched: the correlations of the reference are kept
and its palette's shape (e.g. two clusters of colour) comes across too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Pixels of the reference kept per colour transfer: enough for a smooth 1-D histogram,
# few enough that binning them costs milliseconds at any image size.
REFERENCE_PIXELS = 1 << 18
BINS = 4096  # histogram bins per colour axis: finer than 8-bit steps along any axis
_EPS = 1e-5


def pixels(image: torch.Tensor) -> torch.Tensor:
    """(1, 3, H, W) image -> (3, H·W) float32 pixel columns."""
    return image[0].reshape(image.shape[1], -1).float()


def pooled_reference(images: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """The pixels of several images as one (3, N) sample, each image's share its weight.

    A fixed, evenly strided subsample of each image (no randomness, so a rerun recolours
    identically); images with weight 0 contribute nothing.  The sample is as large as the
    smallest image's share allows, so the proportions hold exactly.
    """
    used = [(pixels(image), w) for image, w in zip(images, weights, strict=True) if w > 0]
    total = sum(w for _, w in used)
    size = min(REFERENCE_PIXELS, *(flat.shape[1] * total / w for flat, w in used))
    parts = []
    for flat, weight in used:
        count = min(max(1, round(size * weight / total)), flat.shape[1])
        index = torch.linspace(0, flat.shape[1] - 1, count, device=flat.device).round().long()
        parts.append(flat[:, index])
    return torch.cat(parts, dim=1)


def match_quantiles(values: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Map each row of ``values`` monotonically onto the distribution of ``reference``'s row.

    Both distributions are read from ``BINS``-bin histograms over their common range, the
    map is worked out at the BINS + 1 bin edges (source CDF, then the reference's inverse
    CDF) and applied to every pixel by linear interpolation: linear in the pixels, no
    sort, and a function of the value, so a flat area of the source stays flat.
    """
    out = torch.empty_like(values)
    for row, (source, target) in enumerate(zip(values, reference, strict=True)):
        low = float(torch.minimum(source.min(), target.min()))
        high = max(float(torch.maximum(source.max(), target.max())), low + _EPS)
        table = _inverse_cdf(_cdf(target, low, high), _cdf(source, low, high), low, high)
        position = (source - low) * (BINS / (high - low))
        index = position.floor().clamp_(0, BINS - 1)
        frac = position - index
        index = index.long()
        out[row] = torch.lerp(table[index], table[index + 1], frac)
    return out


def _cdf(sample: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """The empirical CDF of a 1-D sample at the BINS + 1 bin edges over [low, high]."""
    counts = torch.histc(sample, BINS, low, high)
    edges = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
    return edges / edges[-1]


def _inverse_cdf(cdf: torch.Tensor, q: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """The value at which the piecewise-linear ``cdf`` reaches each quantile ``q``."""
    upper = torch.searchsorted(cdf, q.contiguous()).clamp(1, BINS)
    below, above = cdf[upper - 1], cdf[upper]
    frac = ((q - below) / (above - below).clamp_min(1e-12)).clamp(0, 1)
    return low + (upper - 1 + frac) * (high - low) / BINS


def _principal_axes(columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean (3, 1), eigenvalues (3,) and eigenvectors (3, 3) of a (3, N) sample.

    Accumulated in float64 (sums over millions of pixels), returned in the sample's dtype.
    """
    wide = columns.double()
    mean = wide.mean(1, keepdim=True)
    cov = torch.cov(wide) + torch.eye(3, dtype=wide.dtype, device=wide.device) * _EPS
    values, vectors = torch.linalg.eigh(cov)
    dtype = columns.dtype
    return mean.to(dtype), values.clamp_min(_EPS).to(dtype), vectors.to(dtype)


def match_histograms(source: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Recolour the (1, 3, H, W) ``source`` to the colour histogram of ``reference``.

    ``reference`` is an image or a (3, N) pixel sample (e.g. :func:`pooled_reference`).
    The result is in 0–1 and has the source's shape and dtype.
    """
    ref = reference if reference.dim() == 2 else pixels(reference)
    src = pixels(source)
    s_mean, s_vals, s_vecs = _principal_axes(src)
    r_mean, r_vals, r_vecs = _principal_axes(ref)
    whiten = s_vecs @ torch.diag(s_vals.rsqrt()) @ s_vecs.T
    colour = r_vecs @ torch.diag(r_vals.sqrt()) @ r_vecs.T
    affine = colour @ whiten @ (src - s_mean)  # centred, with the reference's covariance
    # 1-D histograms along the reference's principal axes, where its channels decorrelate
    projected = r_vecs.T @ affine
    matched = match_quantiles(projected, r_vecs.T @ (ref - r_mean))
    out = r_vecs @ matched + r_mean
    return out.reshape(source.shape).to(source.dtype).clamp(0, 1)
