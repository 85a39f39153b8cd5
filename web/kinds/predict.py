"""Submit handler for ``predict``: images for the model of a succeeded fine-tune job.

The model is checked now (same owner, kind ``fine_tune``, ``succeeded``, ``model.pt``
recorded) so a prediction that cannot run is refused before a job exists.
Images are checked from their headers only (format, bytes, pixels, aspect ratio): up
to 256 of them are decoded by the worker, which lists an unreadable one in
``predictions.json`` instead of failing the others.
"""

from __future__ import annotations

from shared.errors import InputError
from shared.images import inspect_image
from shared.jobs import StoredFile, get_job
from shared.params_finetune import MAX_PREDICT_IMAGES, display_name, validate_predict_params
from shared.states import SUCCEEDED
from web.kinds import KindHandler, Prepared, SubmitContext, read_upload, uploads

MODEL_FILE = "model.pt"


def check_model(ctx: SubmitContext, model_id: str) -> None:
    """InputError unless ``model_id`` is this owner's succeeded fine-tune with a model.pt."""
    job = get_job(ctx.session, model_id, ctx.owner)
    if job is None or job.kind != "fine_tune":
        raise InputError(
            f"model: there is no fine_tune job {model_id}; pass the id of one of your "
            "succeeded fine_tune jobs",
            field="model",
        )
    if job.status != SUCCEEDED:
        raise InputError(
            f"model: fine_tune job {model_id} is {job.status}, not succeeded; wait for it to "
            "succeed or pick another",
            field="model",
            status=409,
            code="conflict",
        )
    if not any(f.name == MODEL_FILE for f in job.files):
        raise InputError(f"model: job {model_id} has no {MODEL_FILE}", field="model")


def prepare(ctx: SubmitContext) -> Prepared:
    params = validate_predict_params(ctx.form, ctx.settings)
    check_model(ctx, params["model"])
    images = uploads(ctx.files, "image")
    if not images:
        raise InputError("image is required: upload one or more images", field="image")
    if len(images) > MAX_PREDICT_IMAGES:
        raise InputError(f"image: at most {MAX_PREDICT_IMAGES} images per job", field="image")
    limits = ctx.settings
    inputs, names = [], []
    for i, upload in enumerate(images, start=1):
        data = read_upload(upload, "image", limits.max_upload_bytes)
        info = inspect_image(
            data,
            field="image",
            max_bytes=limits.max_upload_bytes,
            max_pixels=limits.max_pixels,
            max_aspect_ratio=limits.max_aspect_ratio,
        )
        stored = StoredFile("image", f"image-{i}.{info.extension}", info.content_type, len(data))
        inputs.append((stored, data))
        names.append(display_name(upload.filename, stored.name))
    params["image_names"] = names
    return Prepared(params, inputs)


HANDLER = KindHandler(file_fields=("image",), prepare=prepare)
