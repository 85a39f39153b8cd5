"""``predict``: label images with the model of a succeeded ``fine_tune`` job."""

from __future__ import annotations

from shared.kinds.spec import FileField, KindSpec, Param
from shared.queue import GPU_QUEUE

MAX_PREDICT_IMAGES = 256

PARAMS = (
    Param(
        "model", "job_id", "id of one of your succeeded fine_tune jobs", engine=False, required=True
    ),
    Param("top_k", "int", "labels per image, best first", default=3, minimum=1, maximum=100),
)

SPEC = KindSpec(
    name="predict",
    title="Predict",
    queue=GPU_QUEUE,
    doc="Label images with a model you fine-tuned here.",
    files=(FileField("image", "one or more images to label", max_count=MAX_PREDICT_IMAGES),),
    params=PARAMS,
    views=("predictions",),
)
