"""Query-string parameters of the job lists, each parsed once at the edge.

Every value is checked here before it reaches SQL, because what slips through answers
500 rather than 400: PostgreSQL refuses text with a NUL byte, and a cursor whose time
has no zone cannot be compared with the stored (UTC) times. A bad value raises
InputError (400) whose ``field`` names the parameter; the API renders it as JSON and the
pages as the error page. Parameters a route does not take are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC

from shared.errors import InputError
from shared.jobs import decode_cursor, is_job_id
from shared.kinds import KINDS  # the kinds a filter may name: the live registry's keys
from shared.states import STATUSES

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_CURSOR_LENGTH = 200  # a real cursor is 96 characters (microseconds, 32-hex id)

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_DIGITS = re.compile(r"[0-9]{1,6}")
_CURSOR = re.compile(r"[A-Za-z0-9_=-]+")
BAD_CURSOR = (
    "cursor is not valid: pass the `next` value of a previous page unchanged, "
    "or leave cursor out to start from the first page"
)


@dataclass(frozen=True)
class ListQuery:
    """The filters and page of one list request, every value already checked."""

    status: str | None = None
    kind: str | None = None
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None
    parent: str | None = None  # a sweep's id: its children only


def text(args: Mapping[str, str], name: str) -> str | None:
    """The raw value, None when absent or empty (the forms send "" for "any").

    Control characters are refused for every parameter: none is meaningful in a filter
    or cursor, and a NUL byte is an error in PostgreSQL text.
    """
    value = args.get(name)
    if not value:
        return None
    if _CONTROL.search(value):
        raise InputError(f"{name} must not contain control characters", field=name)
    return value


def choice(args: Mapping[str, str], name: str, allowed: Collection[str]) -> str | None:
    """One of ``allowed``, or None; the message lists the choices, never echoes the value."""
    value = text(args, name)
    if value is not None and value not in allowed:
        raise InputError(f"{name} must be one of {', '.join(allowed)}", field=name)
    return value


def limit(
    args: Mapping[str, str], *, default: int = DEFAULT_LIMIT, maximum: int = MAX_LIMIT
) -> int:
    """A page size in 1..maximum; plain ASCII digits only (no sign, spaces or "1_0")."""
    value = text(args, "limit")
    if value is None:
        return default
    if not _DIGITS.fullmatch(value) or not 1 <= int(value) <= maximum:
        raise InputError(
            f"limit must be a whole number from 1 to {maximum} (default {default})",
            field="limit",
        )
    return int(value)


def cursor(args: Mapping[str, str]) -> str | None:
    """A cursor as ``shared.jobs.encode_cursor`` makes them, else InputError.

    Beyond decoding, its time must carry a zone and fit in UTC (a naive or out-of-range
    time fails only when the query binds it) and its id must look like a job id.
    """
    value = text(args, "cursor")
    if value is None:
        return None
    if len(value) > MAX_CURSOR_LENGTH or not _CURSOR.fullmatch(value):
        raise InputError(BAD_CURSOR, field="cursor")
    try:
        created, job_id = decode_cursor(value)
        if created.utcoffset() is None:
            raise ValueError("naive time")
        created.astimezone(UTC)
    except (ValueError, TypeError, OverflowError):
        raise InputError(BAD_CURSOR, field="cursor") from None
    if not is_job_id(job_id):
        raise InputError(BAD_CURSOR, field="cursor")
    return value


def job_id(args: Mapping[str, str], name: str) -> str | None:
    """A job id (32 lowercase hex digits), or None; the message never echoes the value."""
    value = text(args, name)
    if value is not None and not is_job_id(value):
        raise InputError(f"{name} must be a job id (32 hex digits)", field=name)
    return value


def list_query(args: Mapping[str, str], *, page_size: int | None = None) -> ListQuery:
    """status, kind, limit, cursor and parent of a job list.

    ``page_size`` fixes the page for a route without a ``limit`` parameter (the gallery),
    which then ignores one like any parameter it does not take.
    """
    return ListQuery(
        status=choice(args, "status", STATUSES),
        kind=choice(args, "kind", KINDS),
        limit=limit(args) if page_size is None else page_size,
        cursor=cursor(args),
        parent=job_id(args, "parent"),
    )
