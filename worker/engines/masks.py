"""Region masks: which style paints which part of the picture (Gatys et al. 2017, §4).

A mask is an image in the pure colours of shared/kinds/style_transfer.py's
``MASK_COLOURS``; ``mask_styles`` gives each colour a style index or ``keep``, and
colours it leaves out get the blend of every style, as without a mask.  Pixels of one
target form one *region*, however many colours map to it.

* Snapping: the mask is resized to the output (nearest neighbour, so no new colours are
  made) and every pixel takes the nearest candidate colour in RGB: the listed colours and
  any palette colour clearly painted on ``MIN_SHARE`` of the mask.  Anti-aliased edges and
  JPEG noise therefore join a neighbouring region instead of forming slivers.
* Style loss per region: at each layer the region's map is averaged down to that layer's
  resolution, its masked Gram Σ m·F Fᵀ / (C·Σ m) is compared with its own style's Gram
  (the whole style image's, as usual), and regions weigh by their area.
* No seams: the maps are blurred by ``FEATHER`` of the long side before use, so features
  near a border feel both targets and the styles cross-fade over a few pixels; ``keep``
  regions are composited from the content with the same soft map inside every step, so
  the optimiser sees, and smooths, the border it will produce.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from shared.kinds.style_transfer import KEEP, MASK_COLOURS

from . import imaging
from .losses import LayerChoice

FEATHER = 0.015  # blur sigma of the region maps, as a share of the scale's long side
MIN_SHARE = 0.005  # an unlisted colour painted on less of the mask is a fringe
PURE = 64  # a pixel is clearly painted in a colour when each channel is this close
Target = int | str | None  # a style index, KEEP, or None for the blend of every style


@dataclass(frozen=True)
class RegionPlan:
    """The mask at the output size: a region index per pixel and each region's target."""

    labels: torch.Tensor  # (H, W) int64 region index
    targets: tuple[Target, ...]
    colours: tuple[tuple[str, ...], ...]  # the palette colours in each region

    @property
    def styled(self) -> list[int]:
        """Regions that get a style loss (all but keep)."""
        return [i for i, target in enumerate(self.targets) if target != KEEP]

    def describe(self, shares: Sequence[float]) -> list[dict]:
        """Each region for the metrics: its colours, target and share of the picture."""
        return [
            {
                "colours": list(colours),
                "target": "blend" if target is None else target,
                "share": round(float(share), 4),
            }
            for colours, target, share in zip(self.colours, self.targets, shares, strict=True)
        ]


def parse_mapping(items: Sequence[str]) -> dict[str, Target]:
    """``["red:0", "blue:keep"]`` -> ``{"red": 0, "blue": "keep"}`` (the spec checked it)."""
    mapping: dict[str, Target] = {}
    for item in items:
        colour, _, target = item.partition(":")
        mapping[colour] = target if target == KEEP else int(target)
    return mapping


def snap_colours(rgb: np.ndarray, listed: Sequence[str]) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) index into MASK_COLOURS of each pixel's nearest candidate.

    Candidates: the listed colours and every palette colour that at least MIN_SHARE of
    the pixels are clearly painted in (each channel within PURE of it).  An anti-aliased
    edge between red and blue passes through dark magenta, but none of its pixels is
    clearly black or magenta, so it splits between red and blue.
    """
    names = list(MASK_COLOURS)
    pixels = rgb.astype(np.int32)
    candidates = []
    for i, name in enumerate(names):
        offset = np.abs(pixels - np.asarray(MASK_COLOURS[name], np.int32)).max(-1)
        if name in listed or (offset < PURE).sum() >= MIN_SHARE * offset.size:
            candidates.append(i)
    best = np.full(rgb.shape[:2], np.iinfo(np.int64).max, dtype=np.int64)
    index = np.zeros(rgb.shape[:2], dtype=np.int64)
    for i in candidates:
        distance = ((pixels - np.asarray(MASK_COLOURS[names[i]], np.int32)) ** 2).sum(-1)
        closer = distance < best
        best[closer] = distance[closer]
        index[closer] = i
    return index


def plan_regions(
    mask: Image.Image,
    dims: tuple[int, int],
    mask_styles: Sequence[str],
    device: torch.device | str = "cpu",
) -> RegionPlan:
    """Snap ``mask`` (resized to ``dims``, the output's width and height) to regions."""
    rgb = imaging.to_rgb(mask, "mask")
    if rgb.size != dims:
        rgb = rgb.resize(dims, Image.Resampling.NEAREST)
    mapping = parse_mapping(mask_styles)
    snapped = snap_colours(np.asarray(rgb), list(mapping))
    names = list(MASK_COLOURS)
    present = [names[i] for i in np.unique(snapped)]
    targets: list[Target] = []
    colours: list[list[str]] = []
    region_of_colour = {}
    for name in present:
        target = mapping.get(name)
        if target not in targets:
            targets.append(target)
            colours.append([])
        region = targets.index(target)
        colours[region].append(name)
        region_of_colour[names.index(name)] = region
    lookup = np.zeros(len(names), dtype=np.int64)
    for colour, region in region_of_colour.items():
        lookup[colour] = region
    labels = torch.from_numpy(lookup[snapped]).to(device)
    return RegionPlan(labels, tuple(targets), tuple(tuple(c) for c in colours))


def blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (R, 1, H, W) maps, edges reflected (sums are kept)."""
    radius = min(math.ceil(3 * sigma), maps.shape[-1] - 1, maps.shape[-2] - 1)
    if sigma <= 0 or radius < 1:
        return maps
    offsets = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    out = F.conv2d(F.pad(maps, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    return F.conv2d(F.pad(out, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))


def scale_maps(plan: RegionPlan, dims: tuple[int, int]) -> torch.Tensor:
    """(R, 1, h, w) soft region maps at one scale (``dims`` = w, h), summing to 1."""
    onehot = F.one_hot(plan.labels, len(plan.targets)).permute(2, 0, 1).unsqueeze(1).float()
    width, height = dims
    maps = F.interpolate(onehot, size=(height, width), mode="area")
    return blur(maps, FEATHER * max(dims)).clamp_(0, 1)


def keep_alpha(plan: RegionPlan, maps: torch.Tensor) -> torch.Tensor | None:
    """(1, 1, h, w) share of the content to composite at each pixel; None without keep."""
    keep = [i for i, target in enumerate(plan.targets) if target == KEEP]
    if not keep:
        return None
    return maps[keep].sum(0, keepdim=True).clamp(0, 1)


def composite(
    image: torch.Tensor, content: torch.Tensor, alpha: torch.Tensor | None
) -> torch.Tensor:
    """The image with the keep regions taken from ``content`` (same channels)."""
    if alpha is None:
        return image
    return alpha * content + (1 - alpha) * image


@dataclass
class RegionTargets:
    """One scale's per-region style targets; ``error`` is the masked style loss."""

    masks: dict[str, torch.Tensor]  # layer -> (R, h·w) region weights of the styled regions
    grams: list[dict[str, torch.Tensor]]  # per styled region, layer -> target Gram
    norms: list[dict[str, torch.Tensor]]
    shares: list[float]  # area share of each styled region (sum 1)
    layers: LayerChoice

    def error(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Σ layers w_l Σ regions share_r ‖G_r − T_r‖² / ‖T_r‖², masked Grams G_r."""
        device = features[self.layers.style[0]].device
        total = torch.zeros((), dtype=torch.float32, device=device)
        for layer, weight in zip(self.layers.style, self.layers.style_weights, strict=True):
            feats = features[layer]
            channels = feats.shape[1]
            flat = feats.reshape(channels, -1).float()
            with torch.autocast(device_type=flat.device.type, enabled=False):
                for r, share in enumerate(self.shares):
                    mask = self.masks[layer][r]
                    masked = (flat * mask) @ flat.T / (channels * mask.sum().clamp_min(1e-6))
                    diff = masked - self.grams[r][layer]
                    total = total + weight * share * diff.pow(2).sum() / self.norms[r][layer]
        return total


def region_targets(
    plan: RegionPlan,
    maps: torch.Tensor,
    style_grams: Mapping[int, dict[str, torch.Tensor]],
    blended: dict[str, torch.Tensor],
    content_features: dict[str, torch.Tensor],
    layers: LayerChoice,
) -> RegionTargets:
    """Per-region targets at one scale: the maps averaged down to each style layer's size,
    each styled region's Gram from its own style (``style_grams[index]``) or the blend."""
    styled = [r for r in plan.styled if float(maps[r].sum()) > 0]
    areas = [float(maps[r].sum()) for r in styled]
    total = sum(areas) or 1.0
    masks = {}
    for layer in layers.style:
        shape = content_features[layer].shape[-2:]
        pooled = F.adaptive_avg_pool2d(maps[styled], shape) if styled else maps[:0]
        masks[layer] = pooled.reshape(len(styled), -1)
    grams = []
    for r in styled:
        target = plan.targets[r]
        grams.append(blended if target is None else style_grams[int(target)])
    norms = [{k: g.pow(2).sum().clamp_min(1e-12) for k, g in gs.items()} for gs in grams]
    return RegionTargets(masks, grams, norms, [a / total for a in areas], layers)
