"""How a kind's parameters read to people: the words and widget kinds of the submit form
(web/kinds/form.py) and the /docs tables.

Everything here is worded from the :class:`~shared.kinds.spec.Param` itself (type,
bounds lowered by this server's settings, default, unit, doc), so the form, the docs
page and the OpenAPI description cannot disagree about a field.
"""

from __future__ import annotations

from typing import Any

from shared.kinds import FileField, KindSpec, Param
from shared.settings import Settings

TYPE_TEXT = {
    "int": "integer",
    "float": "number",
    "bool": "boolean",
    "choice": "one of",
    "floats": "numbers, comma-separated",
    "choices": "values, comma-separated",
    "job_id": "job id",
}
# where a doc says what an unset (engine-resolved) parameter becomes
DEFAULT_MARKERS = ("; default: ", "; default ")
ARCHIVE_ACCEPT = ".zip,.tar,.tar.gz,.tgz,application/zip,application/x-tar,application/gzip"


def number_text(value: float) -> str:
    """A bound as an HTML attribute and a person read it: 4096, 0.5, 1e-07."""
    number = float(value)
    if number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    return repr(number)


def default_text(param: Param, settings: Settings | None = None) -> str:
    """The fixed default as a form string, capped like the server caps it ("" when the
    engine or a draw decides)."""
    value = param.default_for(settings)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return number_text(value) if isinstance(value, int | float) else str(value)


def unset_text(param: Param, settings: Settings | None = None) -> str:
    """What leaving the field empty means: the default, or who decides (from the doc)."""
    if param.default is not None:
        return default_text(param, settings)
    if param.random:
        return "random, recorded"
    for marker in DEFAULT_MARKERS:
        if marker in param.doc:
            return param.doc.split(marker, 1)[1]
    return "server default"


def doc_text(param: Param) -> str:
    """The doc without its "default: …" tail (that has a column of its own on /docs)."""
    for marker in DEFAULT_MARKERS:
        if param.default is None and marker in param.doc:
            return param.doc.split(marker, 1)[0]
    return param.doc


def bounds_text(param: Param, settings: Settings | None = None) -> str:
    """ "32 to 4096" for numbers (each value, for number lists); "" for the rest."""
    if param.type not in ("int", "float", "floats"):
        return ""
    low, high = param.bounds(settings)
    return f"{number_text(low)} to {number_text(high)}"


def widget(param: Param) -> str:
    """The form control of a parameter: select, number or text."""
    if param.type in ("choice", "bool"):
        return "select"
    if param.type in ("int", "float"):
        return "number"
    return "text"


def options(param: Param) -> tuple[str, ...]:
    """A select's options (a bool is chosen as true or false)."""
    if param.type == "bool":
        return ("true", "false")
    return param.choices


def step(param: Param) -> str:
    """Whole numbers step by one; any real number the server takes is valid in the form."""
    return "1" if param.type == "int" else "any"


def accept(field: FileField) -> str:
    """The file input's ``accept`` for what the field takes."""
    return "image/*" if field.accepts == "image" else ARCHIVE_ACCEPT


def param_rows(spec: KindSpec, settings: Settings) -> list[dict[str, Any]]:
    """One row per parameter for the /docs page: name, type, bounds, default, unit, doc."""
    rows = []
    for param in spec.params:
        kind = TYPE_TEXT[param.type]
        if param.type in ("choice", "choices"):
            kind += ": " + ", ".join(param.choices)
        rows.append(
            {
                "name": param.name,
                "type": kind,
                "bounds": bounds_text(param, settings),
                "default": "" if param.required else unset_text(param, settings),
                "unit": param.unit,
                "required": param.required,
                "notes": doc_text(param),
            }
        )
    return rows
