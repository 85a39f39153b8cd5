"""The registry of job kinds: one :class:`~shared.kinds.spec.KindSpec` per kind.

``KINDS`` holds the built-in kinds; :func:`register` adds one (a deployment's own kind,
or a test's), and ``ATELIER_KIND_MODULES`` names modules that register theirs when
the web and worker processes start (see README, "Adding a job kind").
"""

from __future__ import annotations

import importlib

from shared.errors import InputError
from shared.kinds import fine_tune, predict, style_transfer, sweep
from shared.kinds.spec import FileField, KindSpec, Param

__all__ = ["KINDS", "FileField", "KindSpec", "Param", "get_kind", "load_modules", "register"]

KINDS: dict[str, KindSpec] = {}


def register(spec: KindSpec) -> KindSpec:
    """Add ``spec`` to the registry (again with the same spec is a no-op)."""
    known = KINDS.get(spec.name)
    if known is not None and known is not spec:
        raise ValueError(f"job kind {spec.name!r} is already registered")
    KINDS[spec.name] = spec
    return spec


def get_kind(name: str) -> KindSpec:
    """The spec of ``name``; InputError naming ``kind`` when there is none."""
    spec = KINDS.get(name)
    if spec is None:
        raise InputError(
            f"kind {name!r} is not supported; use one of {', '.join(KINDS)}", field="kind"
        )
    return spec


def load_modules(names: str | None) -> None:
    """Import each comma-separated module name, which registers its kinds."""
    for name in (n.strip() for n in (names or "").split(",")):
        if name:
            importlib.import_module(name)


for _module in (style_transfer, fine_tune, predict, sweep):
    register(_module.SPEC)
