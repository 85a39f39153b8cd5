"""What a submit handler is given and gives back, and the upload helpers every one uses.

A handler turns one request's form strings and uploads into typed params and input
files, checking everything before ``web.submit`` writes a byte; the kind's
:class:`~shared.kinds.spec.KindSpec` says which fields and files there are.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session
from werkzeug.datastructures import FileStorage, MultiDict

from shared.errors import InputError
from shared.jobs import StoredFile
from shared.kinds import KindSpec
from shared.settings import Settings

# Form fields of every kind that web.submit reads itself; the spec never sees them.
COMMON_FIELDS = frozenset({"kind", "webhook", "webhook_events", "priority"})


@dataclass(frozen=True)
class SubmitContext:
    spec: KindSpec
    form: Mapping[str, str]
    files: MultiDict
    owner: str
    settings: Settings
    session: Session


@dataclass(frozen=True)
class Upload:
    """One checked input file: how it is stored, its bytes, and the name the client gave."""

    stored: StoredFile
    data: bytes
    filename: str | None


@dataclass(frozen=True)
class Prepared:
    params: dict[str, Any]
    inputs: list[tuple[StoredFile, bytes]]


Handler = Callable[[SubmitContext], Prepared]


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
