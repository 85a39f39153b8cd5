"""Result views a job page shows from a finished job's output files, by the kind's views.

A kind's spec (shared/kinds) names its views: ``image`` (the result image, drawn by the
template from the job's outputs), ``fine_tune_report`` (from ``metrics.json``, as
worker/engines/finetune.py and worker/engines/finetune_report.py write it: accuracy,
macro F1, classes, confusion matrix, per-class scores, dataset counts, timings; the
runner adds ``ignored_files``) and ``predictions`` (from ``predictions.json``, whose
shape the README's fine-tuning section shows). The readers take exactly those keys
and tolerate their absence or a wrong type: a page that shows less is better than a 500.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from shared.jobs import file_key
from shared.models import Job
from shared.storage import Storage

log = logging.getLogger(__name__)
MAX_JSON_BYTES = 4 * 1024 * 1024
SCORE_KEYS = ("precision", "recall", "f1", "support")
# (label, key) of metrics.json's headline numbers, in the order the page shows them
SUMMARY = (
    ("accuracy", "accuracy"),
    ("macro F1", "macro_f1"),
    ("best epoch", "best_epoch"),
    ("validation loss", "val_loss"),
    ("ignored files", "ignored_files"),
    ("device", "device"),
)


@dataclass
class FineTuneView:
    summary: list[tuple[str, Any]] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    confusion: list[list[int]] | None = None
    per_class: list[dict[str, Any]] = field(default_factory=list)

    @property
    def confusion_max(self) -> int:
        return max((max(row) for row in self.confusion or [] if row), default=0) or 1


def read_json_output(storage: Storage, job: Job, name: str) -> Any | None:
    """A JSON output file of ``job``, or None when absent, too big or not JSON."""
    item = next((f for f in job.files if f.name == name and f.role == "result"), None)
    if item is None or item.size > MAX_JSON_BYTES:
        return None
    try:
        with storage.open(file_key(job.id, item)) as handle:
            return json.loads(handle.read(MAX_JSON_BYTES + 1))
    except (OSError, ValueError):
        log.warning("job %s: cannot read %s", job.id, name, exc_info=True)
        return None


def _scalar(value: Any) -> bool:
    return isinstance(value, int | float | str) and not isinstance(value, bool)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _summary(metrics: dict[str, Any]) -> list[tuple[str, Any]]:
    rows = [(label, metrics[key]) for label, key in SUMMARY if _scalar(metrics.get(key))]
    dataset = _dict(metrics.get("dataset"))
    for label, part in (("training images", "train"), ("validation images", "val")):
        counts = _dict(dataset.get(part)).values()
        if counts and all(isinstance(c, int) for c in counts):
            rows.append((label, sum(counts)))
    if _scalar(dataset.get("unreadable")):
        rows.append(("unreadable images", dataset["unreadable"]))
    seconds = _dict(metrics.get("timings")).get("seconds")
    if _scalar(seconds):
        rows.append(("seconds", seconds))
    return rows


def _confusion(raw: Any) -> list[list[int]] | None:
    if not isinstance(raw, list) or not raw:
        return None
    for row in raw:
        if not isinstance(row, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in row
        ):
            return None
    return [[int(v) for v in row] for row in raw]


def _per_class(raw: Any, classes: list[str]) -> list[dict[str, Any]]:
    """``per_class`` is {class: {precision, recall, f1, support}}; shown in class order."""
    scores = _dict(raw)
    order = [c for c in classes if c in scores] + [c for c in scores if c not in classes]
    rows = []
    for name in order:
        entry = _dict(scores[name])
        row: dict[str, Any] = {"class": str(name)}
        for key in SCORE_KEYS:
            value = entry.get(key)
            row[key] = value if _scalar(value) and not isinstance(value, str) else None
        rows.append(row)
    return rows


def fine_tune_view(metrics: Any) -> FineTuneView | None:
    """The confusion matrix, per-class table and headline numbers of a fine-tune job."""
    if not isinstance(metrics, dict):
        return None
    raw_classes = metrics.get("classes")
    classes = [str(c) for c in raw_classes] if isinstance(raw_classes, list) else []
    confusion = _confusion(metrics.get("confusion_matrix"))
    if confusion and len(classes) != len(confusion):
        classes = [str(i) for i in range(len(confusion))]
    return FineTuneView(
        summary=_summary(metrics),
        classes=classes,
        confusion=confusion,
        per_class=_per_class(metrics.get("per_class"), classes),
    )


def predict_view(job_dict: dict[str, Any], predictions: Any) -> list[dict[str, Any]]:
    """Each uploaded image with its top labels (or why it could not be read).

    ``predictions.json`` lists ``{name, top: [{label, probability}], error?}`` per image
    in upload order; ``name`` is the client's file name, so rows match inputs by order.
    """
    if not isinstance(predictions, dict) or not isinstance(predictions.get("predictions"), list):
        return []
    images = [i for i in job_dict["inputs"] if i["role"] == "image"]
    rows = []
    for index, entry in enumerate(predictions["predictions"]):
        if not isinstance(entry, dict):
            continue
        name = str(entry.get("name", ""))
        image = images[index] if index < len(images) else None
        top = [
            {"label": str(t.get("label", "?")), "probability": _probability(t.get("probability"))}
            for t in entry.get("top") or []
            if isinstance(t, dict)
        ]
        error = entry.get("error")
        rows.append(
            {
                "name": name,
                "url": image["url"] if image else None,
                "top": top,
                "error": error if isinstance(error, str) else None,
            }
        )
    return rows


def _probability(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return 0.0
