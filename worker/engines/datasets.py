"""Labelled images for fine-tuning: decoding, the stratified split, batches and augmentation.

Images are decoded once, upright and in RGB, resized so the short side is
``image_size × 256/224`` (the ImageNet convention) and kept as uint8 tensors: evaluation
takes the centre ``image_size`` square, training with augmentation a random square and a
random horizontal flip. A file that does not decode is counted and named, not fatal,
unless more than ``MAX_UNREADABLE_FRACTION`` of the dataset is unreadable. So is one whose
header declares too many pixels or too elongated a shape (``ImageLimits``): it is listed
without being decoded, since scaling its short side up would allocate gigabytes.
"""

from __future__ import annotations

import io
import random
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from shared.images import ACCEPTED_FORMATS, failure_detail, tiff_tile_problem

from .errors import InvalidInput
from .imaging import DEFAULT_LIMITS, ImageLimits, check_shape, cover_short_side, resize, to_rgb

MAX_UNREADABLE_FRACTION = 0.1


@dataclass(frozen=True)
class LabeledImage:
    name: str
    label: int
    data: bytes | None  # None: the archive could not deliver it


@dataclass(frozen=True)
class ImageDataset:
    """What the engine trains on; ``val`` None means "split it off ``train``"."""

    classes: list[str]
    train: list[LabeledImage]
    val: list[LabeledImage] | None = None
    limits: ImageLimits = DEFAULT_LIMITS  # the worker passes its settings' bounds


@dataclass
class DecodedSet:
    images: list[torch.Tensor]  # uint8 (3, H, W), short side = resize size
    labels: torch.Tensor
    names: list[str]


@dataclass
class Decoded:
    train: DecodedSet
    val: DecodedSet
    unreadable: list[dict] = field(default_factory=list)


def resize_size(image_size: int) -> int:
    return round(image_size * 256 / 224)


def decode(data: bytes, image_size: int, limits: ImageLimits = DEFAULT_LIMITS) -> torch.Tensor:
    """Bytes → uint8 (3, H, W) with short side ``resize_size``; raises ValueError if unusable.

    The header's size is checked (pixels, aspect ratio, the resized size against
    ``limits.max_pixels``, and a TIFF's tile size) before a pixel is decoded, so no upload
    can make this allocate more than the limits allow.

    ValueError is the only failure for a bad file, whatever Pillow raised (a mangled EXIF
    block raises ``struct.error``, a TIFF tag of the wrong type ``TypeError``): callers list
    such an image as unreadable and carry on, rather than failing the whole job. MemoryError
    alone passes through, so that a failed allocation ends the job ``out_of_memory``.
    """
    target = resize_size(image_size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # the formats a single upload may have: no exotic decoder sees archive members
            with Image.open(io.BytesIO(data), formats=list(ACCEPTED_FORMATS)) as image:
                check_shape(image.width, image.height, "the image", limits)
                cover_short_side(image.width, image.height, target, limits.max_pixels)
                if problem := tiff_tile_problem(image):
                    raise InvalidInput(problem, "image")
                image.draft("RGB", (target, target))  # JPEG: decode at a reduced scale
                image = to_rgb(ImageOps.exif_transpose(image))
                size = cover_short_side(image.width, image.height, target, limits.max_pixels)
                image = resize(image, size, max_pixels=limits.max_pixels, reducing_gap=2.0)
                array = np.asarray(image, dtype=np.uint8).copy()
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as exc:
        raise ValueError(str(exc) or type(exc).__name__) from None
    except InvalidInput as exc:
        raise ValueError(exc.message) from None
    except MemoryError:
        raise
    except Exception as exc:  # corrupt headers make Pillow raise struct.error, TypeError…
        raise ValueError(f"the image is corrupt ({failure_detail(exc)})") from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def split(
    items: list[LabeledImage], val_split: float, seed: int
) -> tuple[list[LabeledImage], list[LabeledImage]]:
    """Stratified, seeded: every class keeps ≥ 1 training and (with ≥ 2 images) ≥ 1 val image."""
    rng = random.Random(seed)
    train, val = [], []
    by_class: dict[int, list[LabeledImage]] = {}
    for item in items:
        by_class.setdefault(item.label, []).append(item)
    for label in sorted(by_class):
        group = sorted(by_class[label], key=lambda it: it.name)
        rng.shuffle(group)
        n_val = min(len(group) - 1, max(1, round(len(group) * val_split)))
        val += group[:n_val]
        train += group[n_val:]
    return train, val


def decode_all(
    dataset: ImageDataset,
    *,
    image_size: int,
    val_split: float,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> Decoded:
    """Decode every image once (calling ``progress(done, total)``), then split if needed."""
    everything = dataset.train + (dataset.val or [])
    kept: dict[str, torch.Tensor] = {}
    unreadable = []
    for done, item in enumerate(everything, start=1):
        try:
            if item.data is None:
                raise ValueError("the archive member could not be read (damaged data)")
            kept[item.name] = decode(item.data, image_size, dataset.limits)
        except ValueError as exc:
            unreadable.append({"name": item.name, "reason": str(exc)[:200]})
        if progress is not None:
            progress(done, len(everything))
    if len(unreadable) > MAX_UNREADABLE_FRACTION * len(everything):
        examples = "; ".join(f"{u['name']}: {u['reason']}" for u in unreadable[:3])
        raise InvalidInput(
            f"{len(unreadable)} of {len(everything)} images could not be read (more than "
            f"{MAX_UNREADABLE_FRACTION:.0%}), e.g. {examples}; fix or remove them",
            "dataset",
        )
    train = [it for it in dataset.train if it.name in kept]
    val = [it for it in (dataset.val or []) if it.name in kept]
    if dataset.val is None or not val:
        train, val = split(train, val_split, seed)
    _check_classes(dataset.classes, train)
    return Decoded(_stack(train, kept), _stack(val, kept), unreadable)


def _check_classes(classes: list[str], train: list[LabeledImage]) -> None:
    present = {it.label for it in train}
    missing = [name for i, name in enumerate(classes) if i not in present]
    if missing:
        raise InvalidInput(
            f"no readable training images left for class(es) {', '.join(missing[:10])}",
            "dataset",
        )


def _stack(items: list[LabeledImage], kept: dict[str, torch.Tensor]) -> DecodedSet:
    return DecodedSet(
        [kept[it.name] for it in items],
        torch.tensor([it.label for it in items], dtype=torch.long),
        [it.name for it in items],
    )


def center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    _, h, w = image.shape
    top, left = (h - size) // 2, (w - size) // 2
    return image[:, top : top + size, left : left + size]


def random_crop_flip(image: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    _, h, w = image.shape
    top = int(torch.randint(0, h - size + 1, (1,), generator=gen))
    left = int(torch.randint(0, w - size + 1, (1,), generator=gen))
    crop = image[:, top : top + size, left : left + size]
    return crop.flip(2) if bool(torch.rand((), generator=gen) < 0.5) else crop


def batches(
    data: DecodedSet,
    *,
    image_size: int,
    batch_size: int,
    augment: bool = False,
    gen: torch.Generator | None = None,
    shuffle: bool = False,
    flip: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(float RGB 0–1 batch, labels); centre crops unless ``augment``; ``flip`` mirrors all."""
    order = (
        torch.randperm(len(data.images), generator=gen)
        if shuffle
        else torch.arange(len(data.images))
    )
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size].tolist()
        crops = [
            random_crop_flip(data.images[i], image_size, gen)
            if augment and gen is not None
            else center_crop(data.images[i], image_size)
            for i in idx
        ]
        batch = torch.stack(crops).float().div_(255.0)
        yield (batch.flip(3) if flip else batch), data.labels[idx]
