"""``sweep``: one style transfer job per combination of contents, styles and variants.

A sweep is a parent job whose children are ordinary ``style_transfer`` jobs (their own
progress, cancel and quota count); the parent gathers their results into a contact
sheet (worker/kinds/sweep.py). This module is the kind's one table and the parent's
bookkeeping, torch- and Flask-free like every spec:

* the params: ``strengths`` and ``presets`` (lists, bounded by the style kind's own
  ``strength`` and ``preset``), and the style kind's other non-file params, taken from
  shared/kinds/style_transfer.py's table as they are (the same :class:`Param` objects,
  so a bound changed there changes here), each passed to every child;
* the grid (:func:`grid`): rows are contents, columns are style × variant, where the
  variants are every strength with every preset; the children are created in that
  order and the parent records their ids in ``params["children"]``;
* the wait: the parent is stored ``queued`` in :data:`~shared.states.WAITING_QUEUE`,
  which no worker serves and the claim refuses, so it never occupies a worker. Whoever
  ends a child (the worker's end path, the cancel endpoint, the dispatcher's pass for a
  process that died in between) calls :func:`child_ended`, which counts the ended
  children into the parent's progress and, when none is left, moves the parent to its
  kind's queue in one compare-and-set (:func:`hand_over`); only that caller publishes
  it, and a lost publish is the dispatcher's ordinary unpublished-job case.

Each child stores its own copy of its one content and one style image, so deleting or
expiring the parent or any child never breaks another; the copies cost storage, which
the bound on children and the upload limits keep finite.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import exists, func, select, update
from sqlalchemy.orm import Session, aliased

from shared import states
from shared.errors import InputError
from shared.jobs import StoredFile, add_job
from shared.kinds import style_transfer as style
from shared.kinds.spec import FileField, KindSpec, Param
from shared.models import Job
from shared.queue import CPU_QUEUE
from shared.settings import Settings

MAX_CHILDREN = 64  # the absolute bound; ATELIER_MAX_SWEEP_CHILDREN may lower it
MAX_CONTENTS = 16
STYLE = style.SPEC
STRENGTH = STYLE.param("strength")
PRESET = STYLE.param("preset")
# Style params a child does not take from the sweep: the swept ones, and those that
# only mean something with several styles or a mask (a child has one style, no mask).
NOT_PASSED = frozenset({"strength", "preset", "style_weights", "mask_styles"})
PASSED = tuple(p for p in style.PARAMS if p.name not in NOT_PASSED)

STRENGTHS = Param(
    "strengths",
    "floats",
    f"strengths to try, one child job each ({STRENGTH.doc}); default: {STRENGTH.default}",
    minimum=STRENGTH.minimum,
    maximum=STRENGTH.maximum,
    label="Strengths",
)
PRESETS = Param(
    "presets",
    "choices",
    f"presets to try, one child job each ({PRESET.doc}); default: {PRESET.default}",
    choices=PRESET.choices,
    label="Presets",
)
SWEPT = (STRENGTHS.name, PRESETS.name)


def check(params: dict[str, Any], counts: Mapping[str, int]) -> None:
    """At least one list to sweep, no value twice, and every child's params whole by
    the style kind's own cross-field check (a child has one style and no mask)."""
    if not params.get(STRENGTHS.name) and not params.get(PRESETS.name):
        raise InputError(
            "a sweep needs strengths, presets or both, e.g. strengths=0.3,0.7",
            field=STRENGTHS.name,
        )
    strengths = params.get(STRENGTHS.name) or []
    if len(set(strengths)) != len(strengths):
        raise InputError("strengths must not repeat a value", field=STRENGTHS.name)
    style.check({p.name: params[p.name] for p in PASSED if p.name in params}, {"style": 1})


SPEC = KindSpec(
    name="sweep",
    title="Sweep",
    queue=CPU_QUEUE,
    doc="Try several contents, styles and strengths or presets at once: one style "
    "transfer job per combination, gathered into a labelled contact sheet and a zip.",
    files=(
        FileField(
            "content", "one or more content images (the sheet's rows)", max_count=MAX_CONTENTS
        ),
        FileField("style", "one or more style images", max_count=style.MAX_STYLES),
    ),
    params=(STRENGTHS, PRESETS, *PASSED),
    views=("image",),
    check=check,
)


# --- the grid ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One combination: its content (the sheet's row), its style and its variant."""

    content: int
    style: int
    strength: float
    preset: str

    def label(self) -> str:
        """The column's label on the sheet."""
        return f"style {self.style + 1} · strength {self.strength:g} · {self.preset}"

    def stem(self) -> str:
        """A file name stem that says which combination it is."""
        return (
            f"content-{self.content + 1}_style-{self.style + 1}"
            f"_strength-{self.strength:g}_{self.preset}"
        )


def variants(params: Mapping[str, Any]) -> list[tuple[float, str]]:
    """Every strength with every preset; a list not given is the style kind's default."""
    strengths = params.get(STRENGTHS.name) or [STRENGTH.default]
    presets = params.get(PRESETS.name) or [PRESET.default]
    return [(strength, preset) for strength in strengths for preset in presets]


def grid(params: Mapping[str, Any], contents: int, styles: int) -> list[Cell]:
    """The cells in grid order: content by content, then style, then variant."""
    return [
        Cell(c, s, strength, preset)
        for c in range(contents)
        for s in range(styles)
        for strength, preset in variants(params)
    ]


def max_children(settings: Settings) -> int:
    return min(MAX_CHILDREN, settings.max_sweep_children)


def swept_field(params: Mapping[str, Any]) -> str:
    """The field to name when the sweep is too large: the list that was given."""
    return STRENGTHS.name if params.get(STRENGTHS.name) else PRESETS.name


@dataclass(frozen=True)
class Child:
    """A child job to create: its cell, its params and the parent's uploads it copies."""

    cell: Cell
    params: dict[str, Any]
    content: StoredFile
    style: StoredFile

    def files(self) -> list[tuple[StoredFile, StoredFile]]:
        """(the child's input, the parent's upload it is a copy of), named as a style
        job's own uploads are (content.<ext>, style-1.<ext>)."""
        return [
            (replace(self.content, name=_renamed(self.content, "content")), self.content),
            (replace(self.style, name=_renamed(self.style, "style-1")), self.style),
        ]


def _renamed(stored: StoredFile, stem: str) -> str:
    return f"{stem}.{stored.name.rsplit('.', 1)[-1]}"


def plan(
    params: Mapping[str, Any], inputs: Sequence[StoredFile], settings: Settings
) -> list[Child]:
    """The children of a checked sweep, in grid order; InputError naming the swept list
    when there would be more than the server allows."""
    contents = [f for f in inputs if f.role == "content"]
    styles = [f for f in inputs if f.role == "style"]
    cells = grid(params, len(contents), len(styles))
    limit = max_children(settings)
    if len(cells) > limit:
        raise InputError(
            f"this sweep makes {len(contents)} contents x {len(styles)} styles x "
            f"{len(cells) // max(1, len(contents) * len(styles))} strengths/presets = "
            f"{len(cells)} jobs; at most {limit} are allowed",
            field=swept_field(params),
        )
    passed = {p.name: params[p.name] for p in PASSED if p.name in params}
    return [
        Child(
            cell,
            {**passed, STRENGTH.name: cell.strength, PRESET.name: cell.preset},
            contents[cell.content],
            styles[cell.style],
        )
        for cell in cells
    ]


# --- the parent's bookkeeping (the callers commit) ----------------------------------------


def add_children(session: Session, parent: Job, children: Sequence[tuple[str, Child]]) -> None:
    """Make ``parent`` wait for ``children`` (id, plan) and insert them, in one
    transaction with the parent; each child is a queued style job of the parent's
    owner and priority."""
    parent.queue = states.WAITING_QUEUE
    parent.params = {**parent.params, "children": [child_id for child_id, _ in children]}
    parent.progress_total = len(children)
    parent.progress_stage = "waiting for its children"
    for child_id, child in children:
        job = add_job(
            session,
            job_id=child_id,
            kind=STYLE.name,
            owner=parent.owner,
            params=child.params,
            files=[mine for mine, _ in child.files()],
            priority=parent.priority,
        )
        job.parent_id = parent.id


def _waiting(parent_id: Any) -> tuple[Any, ...]:
    return (Job.id == parent_id, Job.status == states.QUEUED, Job.queue == states.WAITING_QUEUE)


def hand_over(session: Session, parent_id: str) -> bool:
    """Waiting parent → its kind's queue, once no child is left to end; True only for
    the one caller whose compare-and-set moved it (that caller publishes it; until the
    publish is marked, the dispatcher sees an unpublished queued job and sends it)."""
    child = aliased(Job)
    pending = exists().where(
        child.parent_id == parent_id, child.status.not_in(sorted(states.TERMINAL))
    )
    result = session.execute(
        update(Job)
        .where(*_waiting(parent_id), ~pending)
        .values(queue=SPEC.queue, enqueued_at=None)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def child_ended(session: Session, parent_id: str) -> bool:
    """A child of ``parent_id`` ended: its count goes into the waiting parent's progress,
    then :func:`hand_over`. Returns whether this call handed the parent over."""
    child = aliased(Job)
    ended = (
        select(func.count())
        .select_from(child)
        .where(child.parent_id == parent_id, child.status.in_(sorted(states.TERMINAL)))
        .scalar_subquery()
    )
    session.execute(
        update(Job)
        .where(*_waiting(parent_id))
        .values(progress_current=ended)
        .execution_options(synchronize_session=False)
    )
    return hand_over(session, parent_id)


def after_end(session: Session, job_id: str) -> str | None:
    """Call when ``job_id`` ended: the id of its parent when this call handed it over."""
    parent_id = session.scalar(select(Job.parent_id).where(Job.id == job_id))
    if parent_id is None:
        return None
    return parent_id if child_ended(session, parent_id) else None


def ready_parents(session: Session, limit: int = 100) -> list[str]:
    """Waiting parents with no child left to end: a hand-over that the process ending
    the last child did not make (it died in between). The dispatcher's pass."""
    child = aliased(Job)
    pending = exists().where(
        child.parent_id == Job.id, child.status.not_in(sorted(states.TERMINAL))
    )
    return list(
        session.scalars(
            select(Job.id)
            .where(Job.status == states.QUEUED, Job.queue == states.WAITING_QUEUE, ~pending)
            .order_by(Job.created_at)
            .limit(limit)
        )
    )


def cancel_children(session: Session, parent_id: str) -> list[str]:
    """Cancel every child of ``parent_id`` that has not ended: a queued one at once (its
    id is returned, for the caller to revoke its message), a running one flagged for its
    worker's next progress write (the usual cancel path)."""
    ids = session.scalars(
        select(Job.id).where(Job.parent_id == parent_id, Job.status.not_in(sorted(states.TERMINAL)))
    )
    canceled = []
    for child_id in list(ids):
        if states.cancel_queued(session, child_id):
            canceled.append(child_id)
        else:
            states.request_cancel(session, child_id)
    return canceled
