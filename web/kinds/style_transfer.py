"""Submit handler for ``style_transfer``: one content image, one or more style images."""

from __future__ import annotations

from shared.errors import InputError
from shared.images import inspect_image
from shared.jobs import StoredFile
from shared.params import check_style_count, validate_style_params
from web.kinds import KindHandler, Prepared, SubmitContext, read_upload, uploads


def prepare(ctx: SubmitContext) -> Prepared:
    params = validate_style_params(ctx.form, ctx.settings)
    contents = uploads(ctx.files, "content")
    if not contents:
        raise InputError("content is required: upload the content image", field="content")
    if len(contents) > 1:
        raise InputError("content: upload exactly one content image", field="content")
    styles = uploads(ctx.files, "style")
    check_style_count(params, len(styles))
    limits = ctx.settings
    inputs = []
    named = [("content", "content", contents[0])]
    named += [("style", f"style-{i}", f) for i, f in enumerate(styles, start=1)]
    for role, stem, upload in named:
        data = read_upload(upload, role, limits.max_upload_bytes)
        info = inspect_image(
            data,
            field=role,
            max_bytes=limits.max_upload_bytes,
            max_pixels=limits.max_pixels,
            max_aspect_ratio=limits.max_aspect_ratio,
        )
        stored = StoredFile(role, f"{stem}.{info.extension}", info.content_type, len(data))
        inputs.append((stored, data))
    return Prepared(params, inputs)


HANDLER = KindHandler(file_fields=("content", "style"), prepare=prepare)
