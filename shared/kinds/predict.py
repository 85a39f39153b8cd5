"""``predict``: label images with the model of a succeeded ``fine_tune`` job.

``runtime`` picks what runs the network: PyTorch on model.pt, or onnxruntime on the
job's model.onnx (the exported file people take away, so its answers can be checked
here on the same crops).
"""

from __future__ import annotations

from shared.kinds.spec import FileField, KindSpec, Param
from shared.queue import GPU_QUEUE

MAX_PREDICT_IMAGES = 256
RUNTIMES = ("torch", "onnx")
# runtime -> the fine_tune output it loads (the web checks it at submit, the worker loads it)
RUNTIME_FILES = {"torch": "model.pt", "onnx": "model.onnx"}

PARAMS = (
    Param(
        "model", "job_id", "id of one of your succeeded fine_tune jobs", engine=False, required=True
    ),
    Param("top_k", "int", "labels per image, best first", default=3, minimum=1, maximum=100),
    Param(
        "runtime",
        "choice",
        "what runs the model: torch (model.pt) or onnx (the job's model.onnx, onnxruntime)",
        default="torch",
        choices=RUNTIMES,
        engine=False,
        expert=True,
    ),
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
