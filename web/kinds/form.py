"""The submit form of a kind, worked out from its spec for web/templates/index.html.

One :class:`FormField` per parameter (its control, bounds lowered by this server's
settings, its default or who decides it), and per kind the fields its hand-made section
(if any) leaves to the generic rendering: file inputs, everyday and expert parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from shared.kinds import FileField, KindSpec, Param
from shared.settings import Settings
from web.kinds.describe import default_text, number_text, options, step, unset_text, widget


@dataclass(frozen=True)
class FormField:
    """One parameter's form control, everything the template needs already worked out."""

    name: str
    label: str
    doc: str
    widget: str  # select | number | text
    options: tuple[str, ...] = ()
    default: str = ""  # the fixed default as a form string ("" when there is none)
    blank: str | None = None  # a select's empty option ("decided later"), when it has one
    minimum: str | None = None
    maximum: str | None = None
    step: str | None = None
    placeholder: str = ""


def form_field(param: Param, settings: Settings) -> FormField:
    """The control of ``param``: bounds lowered to this server's settings, the default (or
    who decides it) as the placeholder, so an empty field means "the server's default"."""
    kind = widget(param)
    field = FormField(
        param.name,
        param.title,
        param.doc,
        kind,
        default=default_text(param, settings),
        placeholder=unset_text(param, settings),
    )
    if kind == "select":
        blank = None if param.default is not None else unset_text(param, settings)
        return replace(field, options=options(param), blank=blank)
    if kind == "number":
        low, high = param.bounds(settings)
        return replace(field, minimum=number_text(low), maximum=number_text(high), step=step(param))
    return field


@dataclass(frozen=True)
class KindForm:
    """A kind's submit form: every parameter's control (``fields``, for the hand-made
    widgets), and what the hand-made section (if any) leaves to the generic rendering:
    file inputs, everyday parameters, and the expert parameters."""

    spec: KindSpec
    fields: dict[str, FormField]
    files: tuple[FileField, ...]
    basic: tuple[FormField, ...]
    expert: tuple[FormField, ...]

    @property
    def expert_names(self) -> frozenset[str]:
        return frozenset(f.name for f in self.expert)

    def file(self, name: str) -> FileField:
        """The spec's file field ``name`` (for a hand-made section's dropzone)."""
        return next(f for f in self.spec.files if f.name == name)


def kind_form(spec: KindSpec, settings: Settings, hand_made: frozenset[str]) -> KindForm:
    """The generic part of ``spec``'s form: every field not in ``hand_made``."""
    fields = {p.name: form_field(p, settings) for p in spec.params}
    left = [p for p in spec.params if p.name not in hand_made]
    return KindForm(
        spec=spec,
        fields=fields,
        files=tuple(f for f in spec.files if f.name not in hand_made),
        basic=tuple(fields[p.name] for p in left if not p.expert),
        expert=tuple(fields[p.name] for p in left if p.expert),
    )
