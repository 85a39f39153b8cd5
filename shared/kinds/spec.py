"""The shape of a job kind: its parameters, file fields, queue and result views.

A :class:`KindSpec` is the one place a kind's fields, bounds, defaults and choices are
written. The web form and API parse with it, the OpenAPI description and the pages are
rendered from it, ``atelier submit`` builds its options from it, and the engines check
their (already typed) inputs against the same :class:`Param` objects, so a value the
server accepts is a value the engine runs. Torch-free: the web process imports it.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.errors import InputError
from shared.settings import Settings

TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"0", "false", "no", "off"})
# Param.type values: what one form string becomes.
TYPES = ("int", "float", "bool", "choice", "floats", "choices", "job_id")
NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
JOB_ID_PATTERN = r"^[0-9a-f]{32}$"


def number_text(value: float) -> str:
    """Bounds as people write them: 1e+09 → 1e9, 0.0 → 0."""
    if float(value).is_integer() and abs(value) < 1e6:
        return str(int(value))
    return f"{value:g}".replace("e+0", "e").replace("e+", "e").replace("e-0", "e-")


@dataclass(frozen=True)
class Param:
    """One parameter of a job kind.

    ``default`` None means "left to the engine" (it depends on other values, e.g. the
    preset or the strategy); the engine records what it chose in ``metrics.json``.
    ``random`` parameters (the seed) are drawn within the bounds when not given, and
    recorded. ``limit`` names a :class:`Settings` field that lowers ``maximum`` on a
    given server (an operator's cap); the engine itself checks the absolute bounds.
    """

    name: str
    type: str
    doc: str
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    unit: str = ""
    limit: str | None = None
    expert: bool = False
    random: bool = False
    engine: bool = True  # False: read by the runner (e.g. output_format), not the engine
    required: bool = False  # a submit without it is refused (predict's model)
    label: str = ""

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"{self.name}: type must be one of {TYPES}, got {self.type!r}")
        if self.type in ("choice", "choices") and not self.choices:
            raise ValueError(f"{self.name}: a {self.type} parameter needs choices")
        if self.type in ("int", "float", "floats") and (
            self.minimum is None or self.maximum is None
        ):
            raise ValueError(f"{self.name}: a {self.type} parameter needs both bounds")

    @property
    def title(self) -> str:
        return self.label or self.name.replace("_", " ").capitalize()

    def default_for(self, settings: Settings | None = None) -> Any:
        """The default as a typed value; a numeric one never above the server's cap (a
        server limited to 256 px runs an unsized job at 256, not at the usual 512)."""
        value = self.default
        if isinstance(value, tuple):
            return list(value)
        if value is not None and self.limit is not None and settings is not None:
            value = min(value, self.bounds(settings)[1])
        return value

    def bounds(self, settings: Settings | None = None) -> tuple[float, float]:
        """(minimum, maximum), the maximum lowered to the server's ``limit`` setting."""
        low, high = self.minimum, self.maximum
        assert low is not None and high is not None
        if settings is not None and self.limit is not None:
            high = min(high, getattr(settings, self.limit))
        return low, high

    # -- strings from a form or the API ---------------------------------------------------

    def parse(self, raw: str, settings: Settings | None = None) -> Any:
        """The typed value of one form string; InputError naming the field otherwise."""
        text = raw.strip()
        if self.type == "int":
            try:
                value: Any = int(text)
            except ValueError:
                raise self._error(f"must be a whole number, got {raw!r}") from None
        elif self.type == "float":
            try:
                value = float(text)
            except ValueError:
                raise self._error(f"must be a number, got {raw!r}") from None
        elif self.type == "bool":
            lowered = text.lower()
            if lowered not in TRUE | FALSE:
                raise self._error(f"must be true or false, got {raw!r}")
            value = lowered in TRUE
        elif self.type == "choice" or self.type == "job_id":
            value = text.lower()
        elif self.type == "floats":
            value = []
            for part in (p for p in text.replace(" ", "").split(",") if p):
                try:
                    value.append(float(part))
                except ValueError:
                    raise self._error(f"must be comma-separated numbers, got {raw!r}") from None
        else:  # choices
            value = [p.strip().lower() for p in text.split(",") if p.strip()]
        return self.check(value, settings)

    # -- typed values (the engines, the library and the CLI) ------------------------------

    def check(self, value: Any, settings: Settings | None = None) -> Any:
        """``value`` if it is within this parameter's type and bounds; InputError if not.

        The engines call this on already-typed values (the job's recorded params or a
        library caller's keywords); the web's :meth:`parse` ends here too.
        """
        if self.type in ("int", "float"):
            return self._check_number(value, settings)
        if self.type == "bool":
            if not isinstance(value, bool):
                raise self._error(f"must be true or false, got {value!r}")
            return value
        if self.type == "choice":
            if value not in self.choices:
                raise self._error(f"must be one of {', '.join(self.choices)}, got {value!r}")
            return value
        if self.type == "job_id":
            if not isinstance(value, str) or len(value) != 32 or value.strip("0123456789abcdef"):
                raise self._error(f"must be a job id (32 hex digits), got {value!r}")
            return value
        if isinstance(value, str) or not isinstance(value, list | tuple) or not value:
            raise self._error(f"must be a non-empty comma-separated list, got {value!r}")
        if self.type == "floats":
            numbers = [self._check_number(v, settings, item=True) for v in value]
            if sum(numbers) <= 0:
                raise self._error("must contain at least one positive weight")
            return numbers
        unknown = [v for v in value if v not in self.choices]
        if unknown:
            raise self._error(
                f"must be comma-separated values from {', '.join(self.choices)}; "
                f"unknown: {', '.join(map(str, unknown))}"
            )
        if len(set(value)) != len(value):
            raise self._error("must not repeat a value")
        return list(value)

    def _check_number(self, value: Any, settings: Settings | None, item: bool = False) -> Any:
        low, high = self.bounds(settings)
        whole = self.type == "int"
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or (whole and not isinstance(value, int))
        ):
            kind = "whole number" if whole else "number"
            raise self._error(f"must be a {kind}, got {value!r}")
        if not (math.isfinite(value) and low <= value <= high):
            what = "each value" if item else "value"
            raise self._error(
                f"{what} must be between {number_text(low)} and {number_text(high)}, got {value!r}"
            )
        return int(value) if whole else float(value)

    def _error(self, text: str) -> InputError:
        return InputError(f"{self.name} {text}", field=self.name)

    def draw(self) -> int:
        """A random value within the bounds (the seed when the client gave none)."""
        low, high = self.bounds()
        return int(low) + secrets.randbelow(int(high) - int(low) + 1)

    # -- descriptions ----------------------------------------------------------------------

    def schema(self, settings: Settings | None = None) -> dict[str, Any]:
        """JSON Schema of the form string (OpenAPI 3.1), bounds and default included.

        A list travels as one comma-separated string; ``x-items`` describes its items
        (bounds or choices) in machine-readable form, beside the pattern.
        """
        doc = self.doc + (f" ({self.unit})" if self.unit else "")
        if self.type in ("int", "float"):
            low, high = self.bounds(settings)
            schema: dict[str, Any] = {
                "type": "integer" if self.type == "int" else "number",
                "minimum": int(low) if self.type == "int" else low,
                "maximum": int(high) if self.type == "int" else high,
            }
        elif self.type == "bool":
            schema = {"type": "boolean"}
        elif self.type == "choice":
            schema = {"type": "string", "enum": list(self.choices)}
        elif self.type == "job_id":
            schema = {"type": "string", "pattern": JOB_ID_PATTERN}
        elif self.type == "floats":
            low, high = self.bounds(settings)
            schema = {
                "type": "string",
                "pattern": f"^{NUMBER}(,{NUMBER})*$",
                "x-items": {"type": "number", "minimum": low, "maximum": high},
            }
            doc += (
                f"; comma-separated numbers, each {number_text(low)} to {number_text(high)}, "
                "at least one above 0"
            )
        else:
            alternatives = "|".join(self.choices)
            schema = {
                "type": "string",
                "pattern": f"^({alternatives})(,({alternatives}))*$",
                "x-items": {"enum": list(self.choices), "uniqueItems": True},
            }
            doc += "; comma-separated, no repeats"
        default = self.default_for(settings)
        if default is not None:
            schema["default"] = ",".join(default) if isinstance(default, list) else default
        if self.random:
            doc += "; random when not given, and recorded"
        schema["description"] = doc
        return schema

    def cli_type(self) -> Callable[[str], Any]:
        """An argparse ``type=`` that parses like the server (errors name the option)."""

        def convert(raw: str) -> Any:
            try:
                return self.parse(raw)
            except InputError as exc:
                import argparse

                raise argparse.ArgumentTypeError(exc.message) from None

        convert.__name__ = self.type
        return convert


@dataclass(frozen=True)
class FileField:
    """A file upload of a kind: ``image`` fields are checked from their headers against
    the image limits; ``archive`` fields are listed and checked by shared.archives."""

    name: str
    doc: str
    accepts: str = "image"  # image | archive
    max_count: int = 1
    required: bool = True


@dataclass(frozen=True)
class KindSpec:
    """Everything the service needs to know about one job kind."""

    name: str
    title: str
    queue: str
    doc: str
    files: tuple[FileField, ...]
    params: tuple[Param, ...]
    views: tuple[str, ...] = ()
    # cross-field checks on typed values and upload counts (raise InputError)
    check: Callable[[dict[str, Any], Mapping[str, int]], None] | None = None
    by_name: dict[str, Param] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        from shared.queue import QUEUES

        if self.queue not in QUEUES:
            raise ValueError(f"kind {self.name}: queue must be one of {QUEUES}")
        names = [p.name for p in self.params] + [f.name for f in self.files]
        if len(set(names)) != len(names):
            raise ValueError(f"kind {self.name}: a field name repeats")
        object.__setattr__(self, "by_name", {p.name: p for p in self.params})

    def param(self, name: str) -> Param:
        return self.by_name[name]

    @property
    def file_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.files)

    def defaults(self, settings: Settings | None = None) -> dict[str, Any]:
        """The fixed defaults (those that depend on nothing else), as typed values."""
        values = {p.name: p.default_for(settings) for p in self.params}
        return {name: value for name, value in values.items() if value is not None}

    def validate(
        self, form: Mapping[str, str], settings: Settings, ignore: frozenset[str] = frozenset()
    ) -> dict[str, Any]:
        """Typed, bounded params from form strings: unknown fields refused by name, the
        defaults filled, random ones drawn. Fields in ``ignore`` belong to the caller."""
        params = self.defaults(settings)
        for name, raw in form.items():
            if name in ignore:
                continue
            spec = self.by_name.get(name)
            if spec is None:
                hint = (
                    " (it is a file field: send it as a file upload)"
                    if name in self.file_names
                    else ""
                )
                raise InputError(f"unknown field {name!r} for {self.name}{hint}", field=name)
            if raw.strip() != "":
                params[name] = spec.parse(raw, settings)
        for spec in self.params:
            if spec.random and spec.name not in params:
                params[spec.name] = spec.draw()
            if spec.required and spec.name not in params:
                raise InputError(f"{spec.name} is required: {spec.doc}", field=spec.name)
        return params

    def check_counts(self, params: dict[str, Any], counts: Mapping[str, int]) -> None:
        """Each file field's upload count within its bounds, then the kind's own check."""
        for upload in self.files:
            count = counts.get(upload.name, 0)
            if count == 0 and upload.required:
                raise InputError(
                    f"{upload.name} is required: upload {upload.doc}", field=upload.name
                )
            if count > upload.max_count:
                limit = "exactly one" if upload.max_count == 1 else f"at most {upload.max_count}"
                raise InputError(f"{upload.name}: upload {limit} file(s)", field=upload.name)
        if self.check is not None:
            self.check(params, counts)

    def check_values(
        self, values: Mapping[str, Any], counts: Mapping[str, int] | None = None
    ) -> dict[str, Any]:
        """Engine side: typed values (None = unset) checked against the same table.

        Unknown names are refused, so an engine cannot be handed a field the spec does
        not know; the counts (uploads per file field) run the kind's cross-field check.
        """
        checked: dict[str, Any] = {}
        for name, value in values.items():
            spec = self.by_name.get(name)
            if spec is None:
                raise InputError(f"unknown parameter {name!r} for {self.name}", field=name)
            checked[name] = None if value is None else spec.check(value)
        if counts is not None and self.check is not None:
            self.check({k: v for k, v in checked.items() if v is not None}, counts)
        return checked

    def engine_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The job's recorded params that the engine takes (not runner-only ones)."""
        return {p.name: params[p.name] for p in self.params if p.engine and p.name in params}
