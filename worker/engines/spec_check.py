"""The engines' side of a kind's spec (shared/kinds/spec.py): typed values checked there.

The web parses form strings with the same :class:`~shared.kinds.spec.Param` objects, so
an engine keeps no bounds, choices or defaults of its own: it fills the spec's fixed
defaults, checks every value with ``Param.check`` (absolute bounds, no server caps) and
turns the spec's InputError into the engines' InvalidInput, which the worker records.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from shared.errors import InputError
from shared.kinds.spec import KindSpec

from .errors import InvalidInput

DEVICES = ("auto", "cpu", "cuda")


def engine_names(spec: KindSpec) -> tuple[str, ...]:
    """The params an engine takes: the spec's, less the runner's (e.g. output_format)."""
    return tuple(p.name for p in spec.params if p.engine)


def check_engine_values(
    spec: KindSpec, overrides: Mapping[str, Any], counts: Mapping[str, int] | None = None
) -> dict[str, Any]:
    """Every engine param of ``spec``: given values (None = unset) over the fixed defaults.

    Names that are not engine params are refused, all named at once, so a caller's typo
    never silently runs with a default. Params without a fixed default and not given stay
    None (the engine resolves them); ``counts`` (uploads per file field) run the kind's
    cross-field check, e.g. one style weight per style image.
    """
    names = engine_names(spec)
    unknown = [name for name in overrides if name not in names]
    if unknown:
        raise InvalidInput(
            f"unknown {spec.name} parameter(s): {', '.join(unknown)}; known: {', '.join(names)}",
            unknown[0],
        )
    given = {name: value for name, value in overrides.items() if value is not None}
    values = {name: spec.param(name).default for name in names}
    values.update(given)
    try:
        return spec.check_values(values, counts)
    except InputError as exc:
        raise InvalidInput(exc.message, exc.field) from None


def check_device(value: object) -> str:
    """auto, cpu, cuda, or cuda:N (a worker pinned to one GPU passes its index).

    Engine-only: where to run is the worker's setting, never a job field.
    """
    if isinstance(value, str) and (value in DEVICES or re.fullmatch(r"cuda:\d+", value)):
        return value
    raise InvalidInput(f"device must be auto, cpu, cuda or cuda:N, got {value!r}", "device")
