"""Per-kind submit handlers: each turns form fields and uploads into params and input files.

A handler validates everything before anything is written; ``web.submit`` then stores
the files, commits the row and enqueues, the same way for every kind.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session
from werkzeug.datastructures import FileStorage, MultiDict

from shared.errors import InputError
from shared.jobs import StoredFile
from shared.settings import Settings


@dataclass(frozen=True)
class SubmitContext:
    form: Mapping[str, str]
    files: MultiDict
    owner: str
    settings: Settings
    session: Session


@dataclass(frozen=True)
class Prepared:
    params: dict[str, Any]
    inputs: list[tuple[StoredFile, bytes]]


@dataclass(frozen=True)
class KindHandler:
    file_fields: tuple[str, ...]
    prepare: Callable[[SubmitContext], Prepared]


def read_upload(upload: FileStorage, field: str, limit: int) -> bytes:
    """The upload's bytes, refusing more than ``limit`` without reading it all."""
    data = upload.stream.read(limit + 1)
    if len(data) > limit:
        raise InputError(
            f"{field}: the file is larger than the {limit} byte limit",
            field=field,
            status=413,
            code="too_large",
        )
    return data


def uploads(files: MultiDict, field: str) -> list[FileStorage]:
    """Non-empty uploads of one field (browsers send an empty part for an unused input)."""
    return [f for f in files.getlist(field) if f.filename or f.content_length]


def _registry() -> dict[str, KindHandler]:
    from web.kinds import fine_tune, predict, style_transfer

    return {
        "style_transfer": style_transfer.HANDLER,
        "fine_tune": fine_tune.HANDLER,
        "predict": predict.HANDLER,
    }


HANDLERS: dict[str, KindHandler] = _registry()
