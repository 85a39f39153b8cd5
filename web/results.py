"""Kind-specific result views: what the job page shows from a finished job's output files.

Fine-tune jobs write ``metrics.json`` (classes, confusion matrix, per-class scores);
predict jobs write ``predictions.json`` (API.md fixes its shape). The readers here are
tolerant of missing or extra keys: a page that shows less is better than a 500.
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
# where a metrics.json may nest its evaluation numbers
NESTS = ("", "best", "final", "val", "validation", "evaluation")


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


def _lookup(metrics: dict[str, Any], *names: str) -> Any:
    for nest in NESTS:
        scope = metrics.get(nest) if nest else metrics
        if isinstance(scope, dict):
            for name in names:
                if scope.get(name) is not None:
                    return scope[name]
    return None


def _per_class(raw: Any, classes: list[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if isinstance(raw, dict):
        items = [(str(k), v) for k, v in raw.items() if isinstance(v, dict)]
    elif isinstance(raw, list):
        items = []
        for index, entry in enumerate(raw):
            if isinstance(entry, dict):
                name = entry.get("class") or entry.get("label") or entry.get("name")
                if name is None and index < len(classes):
                    name = classes[index]
                items.append((str(name), entry))
    else:
        return rows
    for name, scores in items:
        row = {"class": name}
        for key in SCORE_KEYS:
            value = scores.get(key, scores.get("f1_score") if key == "f1" else None)
            row[key] = value
        if "accuracy" in scores:
            row["accuracy"] = scores["accuracy"]
        rows.append(row)
    return rows


def fine_tune_view(metrics: Any) -> FineTuneView | None:
    """The confusion matrix, per-class table and headline numbers of a fine-tune job."""
    if not isinstance(metrics, dict):
        return None
    classes = [str(c) for c in (_lookup(metrics, "classes", "class_names") or [])]
    confusion = _lookup(metrics, "confusion_matrix", "confusion")
    if not (
        isinstance(confusion, list)
        and all(
            isinstance(r, list) and all(isinstance(v, int | float) for v in r) for r in confusion
        )
    ):
        confusion = None
    if confusion and len(classes) != len(confusion):
        classes = classes[: len(confusion)] or [str(i) for i in range(len(confusion))]
    summary = [
        (key, value)
        for key, value in metrics.items()
        if isinstance(value, int | float | str) and not isinstance(value, bool)
    ]
    return FineTuneView(
        summary=summary,
        classes=classes,
        confusion=[[int(v) for v in row] for row in confusion] if confusion else None,
        per_class=_per_class(_lookup(metrics, "per_class", "per_class_metrics"), classes),
    )


def predict_view(job_dict: dict[str, Any], predictions: Any) -> list[dict[str, Any]]:
    """Each uploaded image with its top labels; matched by file name, else by order."""
    if not isinstance(predictions, dict) or not isinstance(predictions.get("predictions"), list):
        return []
    images = [i for i in job_dict["inputs"] if i["role"] == "image"]
    by_name = {i["name"]: i for i in images}
    rows = []
    for index, entry in enumerate(predictions["predictions"]):
        if not isinstance(entry, dict):
            continue
        name = str(entry.get("name", ""))
        image = by_name.get(name) or (images[index] if index < len(images) else None)
        top = [t for t in entry.get("top") or [] if isinstance(t, dict)]
        rows.append({"name": name, "url": image["url"] if image else None, "top": top})
    return rows
