"""From a list of relative file paths to classes and train/val images (ImageFolder rules).

Accepted layouts, optionally under one wrapping folder (``hymenoptera/…``):

* ``<class>/<image>`` — the validation part is split off by the engine (``val_split``);
* ``train/<class>/<image>`` plus ``val/<class>/<image>`` (``valid``/``validation`` too).

Only names are looked at, so this runs at submit time, before a job exists: no images,
one class only or too few images per class are refused there. Images deeper than the
class folder belong to that class; files that are not images are ignored and counted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from shared.errors import InputError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
TRAIN_DIRS = frozenset({"train", "training"})
VAL_DIRS = frozenset({"val", "valid", "validation"})
MIN_CLASSES = 2
MIN_IMAGES_PER_CLASS = 5
MAX_CLASSES = 1000
MAX_CLASS_NAME = 100


@dataclass(frozen=True)
class DatasetLayout:
    classes: list[str]
    train: list[tuple[str, int]]  # (path, class index)
    val: list[tuple[str, int]] | None  # None: split off train by the engine
    ignored: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        per_class = Counter(label for _, label in self.train + (self.val or []))
        return {name: per_class[i] for i, name in enumerate(self.classes)}


def _refuse(message: str) -> InputError:
    return InputError(f"dataset: {message}", field="dataset")


def _is_image(path: str) -> bool:
    dot = path.rfind(".")
    return dot > path.rfind("/") and path[dot:].lower() in IMAGE_EXTENSIONS


def _wrapper_depth(paths: list[list[str]]) -> int:
    """How many leading folders every image shares (a zipped parent folder), short of a split."""
    depth = 0
    while all(len(p) >= depth + 3 for p in paths):
        first = {p[depth] for p in paths}
        if len(first) != 1 or next(iter(first)).lower() in TRAIN_DIRS | VAL_DIRS:
            break
        depth += 1
    return depth


def plan_layout(names: list[str], *, min_per_class: int = MIN_IMAGES_PER_CLASS) -> DatasetLayout:
    """Classes and labelled image paths, or InputError saying what the archive must hold."""
    images = sorted(n for n in names if _is_image(n))
    ignored = sorted(n for n in names if not _is_image(n))
    if not images:
        raise _refuse(
            "no images found; the archive must hold <class>/<image> folders of "
            f"{', '.join(sorted(e[1:] for e in IMAGE_EXTENSIONS))} files"
        )
    entries = [(name.split("/"), name) for name in images]
    depth = _wrapper_depth([parts for parts, _ in entries])
    entries = [(parts[depth:], name) for parts, name in entries]
    split = any(p[0].lower() in TRAIN_DIRS for p, _ in entries if len(p) >= 3)
    groups: dict[str, list[tuple[str, str]]] = {"train": [], "val": []}
    for parts, name in entries:
        target = "train"
        if split:
            head = parts[0].lower()
            target = "train" if head in TRAIN_DIRS else "val" if head in VAL_DIRS else None
            parts = parts[1:]
        if target is None or len(parts) < 2:
            ignored.append(name)
            continue
        groups[target].append((parts[0], name))
    return _labelled(groups, split, sorted(ignored), min_per_class)


def _labelled(
    groups: dict[str, list[tuple[str, str]]], split: bool, ignored: list[str], min_per_class: int
) -> DatasetLayout:
    counts = Counter(cls for cls, _ in groups["train"])
    classes = sorted(counts)
    if len(classes) < MIN_CLASSES:
        found = f"only {classes[0]!r}" if classes else "none"
        raise _refuse(
            f"at least {MIN_CLASSES} classes are needed (found {found}); put each class's "
            "images in its own folder: <class>/<image>"
        )
    if len(classes) > MAX_CLASSES:
        raise _refuse(f"{len(classes)} classes; at most {MAX_CLASSES} are supported")
    long = [c for c in classes if len(c) > MAX_CLASS_NAME]
    if long:
        raise _refuse(f"class name {long[0][:40]!r}… is longer than {MAX_CLASS_NAME} characters")
    few = [f"{c} ({counts[c]})" for c in classes if counts[c] < min_per_class]
    if few:
        raise _refuse(
            f"each class needs at least {min_per_class} training images; too few in "
            + ", ".join(few[:10])
        )
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted({cls for cls, _ in groups["val"]} - set(index))
    if unknown:
        raise _refuse(
            f"val/ has classes that train/ lacks: {', '.join(unknown[:10])}; use the same folders"
        )
    train = [(path, index[cls]) for cls, path in groups["train"]]
    val = [(path, index[cls]) for cls, path in groups["val"]] if split else None
    if split and not val:
        val = None  # train/ without val/: split it like a plain layout
    return DatasetLayout(classes, train, val, ignored)
