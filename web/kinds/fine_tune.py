"""Submit handler for ``fine_tune``: one dataset archive of ``<class>/<image>`` folders.

The archive is listed and checked here (attacks, caps, classes, images per class), so a
dataset that can never train is refused before a job exists; decoding the images is the
worker's part, where unreadable ones are counted rather than fatal.
"""

from __future__ import annotations

from shared.archives import SafeArchive, file_names
from shared.dataset_layout import plan_layout
from shared.errors import InputError
from shared.jobs import StoredFile
from shared.params_finetune import validate_fine_tune_params
from web.kinds import KindHandler, Prepared, SubmitContext, read_upload, uploads

CONTENT_TYPES = {"zip": "application/zip", "tar": "application/x-tar", "tar.gz": "application/gzip"}


def prepare(ctx: SubmitContext) -> Prepared:
    params = validate_fine_tune_params(ctx.form, ctx.settings)
    archives = uploads(ctx.files, "dataset")
    if not archives:
        raise InputError(
            "dataset is required: upload a .zip, .tar or .tar.gz of <class>/<image> folders",
            field="dataset",
        )
    if len(archives) > 1:
        raise InputError("dataset: upload exactly one archive", field="dataset")
    # A dataset is the whole request, so the request cap (not the per-image cap) bounds it.
    data = read_upload(archives[0], "dataset", ctx.settings.max_request_bytes)
    archive = SafeArchive(data)
    plan_layout(file_names(archive.members))
    stored = StoredFile(
        "dataset", f"dataset.{archive.format}", CONTENT_TYPES[archive.format], len(data)
    )
    return Prepared(params, [(stored, data)])


HANDLER = KindHandler(file_fields=("dataset",), prepare=prepare)
