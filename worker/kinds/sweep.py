"""Runs a ``sweep`` once its children have ended: the contact sheet and the zip.

The parent is claimed only after its last child ended (shared/kinds/sweep.py), so every
child here is terminal and its outputs are final. The sheet (``sheet.png``) has one row
per content and one column per style × strength/preset, in the grid order the children
were created in, each labelled; a child that failed, was canceled or was deleted since
shows that in its cell. ``results.zip`` holds the succeeded children's results, named
by what they are (``content-1_style-2_strength-0.3_fast.png``). The metrics record each
child's status. The sweep succeeds when at least one child did. When none has a result
and none failed (every child was canceled, or deleted since), the sweep ends
``canceled`` like its children: every one was withdrawn and nothing went wrong, and
the runner's cancel path (``processing`` → ``canceled``) needs no new state or code.
Otherwise it fails with the first failed child's error code and a message that points
at the children.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw, ImageFont, ImageOps
from sqlalchemy import select

from shared import states
from shared.db import session_scope
from shared.jobs import file_key
from shared.kinds import sweep as sweeps
from shared.models import Job
from worker.engines.errors import Canceled, EngineError
from worker.kinds import KindRunner, RunContext

MIN_CELL, MAX_CELL = 96, 256  # px: room for the labels, and a sheet that stays small
LABEL_WIDTH = 96  # px, the row labels' column
LINE = 12  # px per label line (Pillow's default font is about 11 px high)
PAD = 4
BACKGROUND = (255, 255, 255)
EMPTY = (215, 215, 215)  # a cell with no result
INK = (20, 20, 20)
DELETED = "deleted"  # the status a child whose row is gone reads as


@dataclass(frozen=True)
class ChildResult:
    """What the sheet needs of one child: its status and where its result image is."""

    id: str
    status: str
    error_code: str | None
    error_message: str | None
    result_key: str | None
    result_name: str | None


def read_children(ctx: RunContext, ids: list[str]) -> list[ChildResult]:
    """The children's rows in grid order; a deleted child reads as ``deleted``."""
    with session_scope(ctx.settings.database_url) as session:
        jobs = {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(ids)))}
        found = []
        for child_id in ids:
            job = jobs.get(child_id)
            if job is None:
                found.append(ChildResult(child_id, DELETED, None, None, None, None))
                continue
            image = next(
                (
                    f
                    for f in job.files
                    if f.role == "result" and f.content_type.startswith("image/")
                ),
                None,
            )
            found.append(
                ChildResult(
                    child_id,
                    job.status,
                    job.error_code,
                    job.error_message,
                    file_key(child_id, image) if image else None,
                    image.name if image else None,
                )
            )
        return found


def sheet_size(rows: int, columns: int, cell: int) -> tuple[int, int]:
    """(width, height) of a sheet: the label column and header, then the cells."""
    return (
        LABEL_WIDTH + columns * (cell + PAD) + PAD,
        header_height() + rows * (cell + PAD) + PAD,
    )


def header_height() -> int:
    return 3 * LINE + 2 * PAD


def cell_origin(row: int, column: int, cell: int) -> tuple[int, int]:
    """Top left corner of a cell on the sheet."""
    return LABEL_WIDTH + PAD + column * (cell + PAD), header_height() + PAD + row * (cell + PAD)


def cell_size(params: dict[str, Any]) -> int:
    """The cells are the children's size, within MIN_CELL and MAX_CELL."""
    return max(MIN_CELL, min(MAX_CELL, int(params.get("size") or MAX_CELL)))


def contact_sheet(
    cells: list[sweeps.Cell],
    children: list[ChildResult],
    images: dict[str, Image.Image],
    *,
    columns: int,
    cell: int,
) -> Image.Image:
    """The labelled grid: rows are contents, ``columns`` style × variant."""
    rows = len(cells) // columns
    sheet = Image.new("RGB", sheet_size(rows, columns, cell), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for column, spec in enumerate(cells[:columns]):
        x, _ = cell_origin(0, column, cell)
        lines = (f"style {spec.style + 1}", f"strength {spec.strength:g}", spec.preset)
        for i, line in enumerate(lines):
            draw.text((x, PAD + i * LINE), line, fill=INK, font=font)
    for row in range(rows):
        _, y = cell_origin(row, 0, cell)
        draw.text((PAD, y + cell // 2 - LINE // 2), f"content {row + 1}", fill=INK, font=font)
    for index, (spec, child) in enumerate(zip(cells, children, strict=True)):
        x, y = cell_origin(spec.content, index % columns, cell)
        image = images.get(child.id)
        if image is None:
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=EMPTY)
            draw.text((x + PAD, y + cell // 2 - LINE // 2), child.status, fill=INK, font=font)
            continue
        fitted = ImageOps.contain(image, (cell, cell))
        sheet.paste(fitted, (x + (cell - fitted.width) // 2, y + (cell - fitted.height) // 2))
    return sheet


def _load(ctx: RunContext, child: ChildResult) -> tuple[bytes, Image.Image] | None:
    """A succeeded child's result (its bytes and image); None when it is gone."""
    if child.status != states.SUCCEEDED or child.result_key is None:
        return None
    try:
        with ctx.storage.open(child.result_key) as handle:
            data = handle.read()
        image = Image.open(io.BytesIO(data))
        image.load()
    except (FileNotFoundError, OSError):
        return None  # deleted since, or unreadable: the cell says so
    return data, image.convert("RGB")


class NoChildSucceeded(EngineError):
    """No child has a result: the sweep fails with the first failed child's code."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def run(ctx: RunContext) -> dict[str, Any]:
    """Read the children, build the sheet and the zip, store them with a preview."""
    ids = list(ctx.params.get("children", []))
    cells = sweeps.grid(
        ctx.params, len(ctx.inputs.get("content", [])), len(ctx.inputs.get("style", []))
    )
    if len(cells) != len(ids):
        raise EngineError(f"the sweep records {len(ids)} children for {len(cells)} combinations")
    children = read_children(ctx, ids)
    ctx.mark_processing()
    images: dict[str, Image.Image] = {}
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        for done, (spec, child) in enumerate(zip(cells, children, strict=True), start=1):
            loaded = _load(ctx, child)
            if loaded is not None:
                data, images[child.id] = loaded
                extension = (child.result_name or "result.png").rsplit(".", 1)[-1]
                bundle.writestr(f"{spec.stem()}.{extension}", data)
            ctx.report(current=done, total=len(children), stage="contact sheet", loss=None)
    summary = [
        _child_metrics(spec, child, child.id in images)
        for spec, child in zip(cells, children, strict=True)
    ]
    if not images:
        raise _nothing_succeeded(children)
    cell = cell_size(ctx.params)
    columns = len(cells) // len(ctx.inputs["content"])
    sheet = contact_sheet(cells, children, images, columns=columns, cell=cell)
    buffer = io.BytesIO()
    sheet.save(buffer, "PNG")
    ctx.store_output("sheet.png", buffer.getvalue(), "image/png")
    ctx.store_output("results.zip", archive.getvalue(), "application/zip")
    ctx.save_preview(sheet)
    ctx.save_thumbnail(sheet)
    return {
        "children": summary,
        "succeeded": len(images),
        "sheet": {"rows": len(cells) // columns, "columns": columns, "cell": cell},
    }


def _child_metrics(spec: sweeps.Cell, child: ChildResult, in_sheet: bool) -> dict[str, Any]:
    error = {"code": child.error_code, "message": child.error_message} if child.error_code else None
    return {
        "id": child.id,
        "status": child.status,
        "content": spec.content + 1,
        "style": spec.style + 1,
        "strength": spec.strength,
        "preset": spec.preset,
        "in_sheet": in_sheet,
        "error": error,
    }


# withdrawn (by a person, or a deletion by the result expiry), not failed
WITHDRAWN = frozenset({states.CANCELED, DELETED})


def _nothing_succeeded(children: list[ChildResult]) -> Canceled | NoChildSucceeded:
    """What the runner raises when no child has a result: Canceled when every child was
    canceled or deleted, else NoChildSucceeded with the first failed child's code
    (``internal`` only for the unexplained: a succeeded child whose result is unreadable)."""
    if all(child.status in WITHDRAWN for child in children):
        return Canceled(f"all {len(children)} child jobs of the sweep were canceled or deleted")
    counts: dict[str, int] = {}
    for child in children:
        counts[child.status] = counts.get(child.status, 0) + 1
    failed = next((c for c in children if c.error_code), None)
    told = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    detail = f"; the first failure: {failed.error_message}" if failed else ""
    return NoChildSucceeded(
        f"none of the sweep's {len(children)} child jobs has a result ({told}){detail}; "
        "see each child's error (GET /api/v1/jobs?parent=<this id>) and submit again",
        failed.error_code if failed and failed.error_code in states.ERROR_CODES else "internal",
    )


RUNNER = KindRunner(
    run,
    out_of_memory_hint="sweep fewer or smaller images",
    timeout_hint="sweep fewer combinations",
)
