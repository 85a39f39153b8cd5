"""Submit handlers per job kind: each turns form fields and uploads into params and files.

Every kind in :data:`shared.kinds.KINDS` is handled by :func:`web.kinds.generic.prepare`,
which its spec drives, unless a handler was registered for it with
:func:`register_handler` (``predict`` checks its model; a module named in
``ATELIER_KIND_MODULES`` may register one for its own kind). Lookups happen per request,
so a kind registered after this module was imported is handled too.

A handler validates everything before anything is written; ``web.submit`` then stores
the files, commits the row and enqueues, the same way for every kind.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from shared.errors import InputError
from shared.kinds import KINDS, KindSpec, get_kind
from web.kinds import generic, predict
from web.kinds.base import (
    COMMON_FIELDS,
    Handler,
    Prepared,
    SubmitContext,
    Upload,
    read_upload,
    uploads,
)
from web.kinds.generic import parse_params, read_inputs

__all__ = [
    "COMMON_FIELDS",
    "HANDLERS",
    "Handler",
    "Prepared",
    "SubmitContext",
    "Upload",
    "handler_for",
    "parse_params",
    "read_inputs",
    "read_upload",
    "register_handler",
    "uploads",
    "validate_kind",
]

_REGISTERED: dict[str, Handler] = {"predict": predict.prepare}


def register_handler(kind: str, handler: Handler) -> None:
    """Use ``handler`` instead of the generic one for ``kind`` (its spec may come later)."""
    _REGISTERED[kind] = handler


def handler_for(kind: str) -> Handler:
    """The registered handler of ``kind``, else the generic one."""
    return _REGISTERED.get(kind, generic.prepare)


class _Handlers(Mapping[str, Handler]):
    """A live view: one handler per kind registered in shared.kinds right now."""

    def __getitem__(self, kind: str) -> Handler:
        if kind not in KINDS:
            raise KeyError(kind)
        return handler_for(kind)

    def __iter__(self) -> Iterator[str]:
        return iter(KINDS)

    def __len__(self) -> int:
        return len(KINDS)


HANDLERS: Mapping[str, Handler] = _Handlers()


def validate_kind(raw: str | None) -> KindSpec:
    """The spec of the submitted ``kind``; InputError naming ``kind`` when blank or unknown."""
    if raw is None or raw.strip() == "":
        raise InputError(f"kind is required: use one of {', '.join(KINDS)}", field="kind")
    return get_kind(raw.strip())
