"""The submit handler every kind gets unless it registers its own: driven by its spec.

Form strings are parsed by the spec's :class:`~shared.kinds.spec.Param` objects; each
:class:`~shared.kinds.spec.FileField` is read and checked by what it accepts:

* ``image``: header only (format, bytes, pixels, aspect ratio, limits from settings);
  the worker decodes the pixels;
* ``archive``: listed and checked by :class:`shared.archives.SafeArchive` (attacks,
  caps) and :func:`shared.dataset_layout.plan_layout` (classes, images per class), so a
  dataset that can never train is refused before a job exists.

Stored names: ``<field>.<ext>`` for a single-file field (``content.png``,
``dataset.zip``), ``<field>-<n>.<ext>`` for a repeatable one (``style-1.png``,
``image-3.jpg``).
"""

from __future__ import annotations

from typing import Any

from werkzeug.datastructures import FileStorage

from shared.archives import SafeArchive, file_names
from shared.dataset_layout import plan_layout
from shared.errors import InputError
from shared.images import inspect_image
from shared.jobs import StoredFile
from shared.kinds import FileField
from shared.settings import Settings
from web.kinds.base import (
    COMMON_FIELDS,
    Prepared,
    SubmitContext,
    Upload,
    read_upload,
    uploads,
)

ARCHIVE_TYPES = {"zip": "application/zip", "tar": "application/x-tar", "tar.gz": "application/gzip"}
# what shared.archives and shared.dataset_layout name in their errors
ARCHIVE_FIELD = "dataset"


def parse_params(ctx: SubmitContext) -> dict[str, Any]:
    """Typed params from the form: defaults filled, seed drawn, required ones present."""
    return ctx.spec.validate(ctx.form, ctx.settings, ignore=COMMON_FIELDS)


def _stem(field: FileField, index: int) -> str:
    return field.name if field.max_count == 1 else f"{field.name}-{index}"


def _image(field: FileField, index: int, upload: FileStorage, settings: Settings) -> Upload:
    data = read_upload(upload, field.name, settings.max_upload_bytes)
    info = inspect_image(
        data,
        field=field.name,
        max_bytes=settings.max_upload_bytes,
        max_pixels=settings.max_pixels,
        max_aspect_ratio=settings.max_aspect_ratio,
    )
    name = f"{_stem(field, index)}.{info.extension}"
    return Upload(StoredFile(field.name, name, info.content_type, len(data)), data, upload.filename)


def _archive(field: FileField, index: int, upload: FileStorage, settings: Settings) -> Upload:
    # A dataset is the whole request, so the request cap (not the per-image cap) bounds it.
    data = read_upload(upload, field.name, settings.max_request_bytes)
    try:
        archive = SafeArchive(data)
        plan_layout(file_names(archive.members))
    except InputError as exc:
        if field.name == ARCHIVE_FIELD:
            raise
        message = exc.message.removeprefix(f"{ARCHIVE_FIELD}: ")
        raise InputError(
            f"{field.name}: {message}", field=field.name, status=exc.status, code=exc.code
        ) from None
    name = f"{_stem(field, index)}.{archive.format}"
    stored = StoredFile(field.name, name, ARCHIVE_TYPES[archive.format], len(data))
    return Upload(stored, data, upload.filename)


READERS = {"image": _image, "archive": _archive}


def read_inputs(ctx: SubmitContext, params: dict[str, Any]) -> list[Upload]:
    """Every file field's uploads, counted against the spec (and its cross-field check),
    then read and checked one by one; nothing is stored here."""
    picked = {field.name: uploads(ctx.files, field.name) for field in ctx.spec.files}
    ctx.spec.check_counts(params, {name: len(found) for name, found in picked.items()})
    inputs = []
    for field in ctx.spec.files:
        read = READERS[field.accepts]
        for index, upload in enumerate(picked[field.name], start=1):
            inputs.append(read(field, index, upload, ctx.settings))
    return inputs


def prepare(ctx: SubmitContext) -> Prepared:
    """Params, then file counts, then each file: the first problem found is the answer."""
    params = parse_params(ctx)
    inputs = read_inputs(ctx, params)
    return Prepared(params, [(u.stored, u.data) for u in inputs])
