"""Property-based requests generated from our own OpenAPI description: never a 5xx.

schemathesis reads GET /api/v1/openapi.json and sends valid (positive) and invalid
(negative) requests of every operation through the real app (its WSGI interface, a real
database and Redis). Its pytest plugin does not work with this pytest, so the operations
are driven with hypothesis directly.

In ``make test`` the run is the same every time: a fixed seed, derandomised, no example
database, and no constants mined from source code (schemathesis mines the app's modules,
hypothesis every local module imported so far, so what they find depends on which tests
ran first). A red run is then a bug that reproduces, alone or in the suite, never bad
luck. ``make fuzz`` sets ``FUZZ_EXAMPLES`` for a longer randomised run with mined
constants, on both databases; a failure prints the ``@seed`` that replays it.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed
from hypothesis import settings as hypothesis_settings
from hypothesis.internal.conjecture import providers
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig

from web import create_app

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES") or 0)
FUZZING = FUZZ_EXAMPLES > 0
EXAMPLES = FUZZ_EXAMPLES or 25  # per operation and mode: reaches every query parameter
SEED = 20_240_607


def _hypothesis_settings() -> hypothesis_settings:
    """Deterministic unless fuzzing; the phases are spelled out so none sneaks in later."""
    return hypothesis_settings(
        max_examples=EXAMPLES,
        derandomize=not FUZZING,
        database=None,
        deadline=None,
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
        print_blob=FUZZING,
        suppress_health_check=list(HealthCheck),
    )


@pytest.fixture
def fixed_constants(monkeypatch):
    """No literals from local modules in a fixed run: only the seed decides the cases.

    Hypothesis mixes in constants it mines from every local module imported so far, so
    the cases would differ between this file alone and the whole suite. This reaches
    into hypothesis internals; if they move, setattr fails loudly rather than silently.
    """
    if not FUZZING:
        monkeypatch.setattr(providers, "_get_local_constants", providers.Constants)
    providers.CONSTANTS_CACHE.cache.clear()
    yield
    providers.CONSTANTS_CACHE.cache.clear()


def _schema(settings):
    app = create_app({"ATELIER_SETTINGS": settings, "TESTING": True})
    config = SchemathesisConfig.from_dict({"analysis": {"constants": {"enabled": FUZZING}}})
    return schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app, config=config)


def _run(operation, mode: GenerationMode) -> None:
    """Every generated request of one operation and mode; a 5xx fails with the case."""

    @given(case=operation.as_strategy(mode))
    @_hypothesis_settings()
    def check(case) -> None:
        case.call_and_validate(checks=[not_a_server_error])

    (check if FUZZING else seed(SEED)(check))()


def _modes(operation) -> tuple[GenerationMode, ...]:
    """Negative cases only where the schema leaves something to break: a query or a body.

    A path segment of type string, or no parameter at all, has no invalid value, and
    hypothesis would report the negative strategy as unsatisfiable.
    """
    has_query = any(p.location == "query" for p in operation.iter_parameters())
    if has_query or len(operation.body):
        return (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    return (GenerationMode.POSITIVE,)


def _operations(settings) -> list:
    operations = [result.ok() for result in _schema(settings).get_all_operations()]
    assert len(operations) >= 7
    return operations


def test_no_operation_answers_a_server_error(settings, fixed_constants):
    operations = _operations(settings)
    for operation in operations:
        for mode in _modes(operation):
            _run(operation, mode)


CONTROL_VALUES = ("\x00", "a\x00b", "\x1f", "\x7f")


def test_control_characters_in_any_query_parameter_are_a_400_naming_it(settings):
    """Fixed cases of the bug class a random run once found: a NUL byte in a text parameter.

    PostgreSQL refuses NUL in text, so a value that reaches SQL unchecked is a 500 there.
    Every query parameter the description lists, now and later, gets them.
    """
    for operation in _operations(settings):
        parameters = list(operation.iter_parameters())
        path = {p.name: "0" * 32 for p in parameters if p.location == "path"}
        for name in (p.name for p in parameters if p.location == "query"):
            for value in CONTROL_VALUES:
                case = operation.Case(path_parameters=path, query={name: value})
                response = case.call_and_validate(checks=[not_a_server_error])
                assert response.status_code == 400, (operation.label, name, value)
                assert response.json()["error"]["field"] == name, (operation.label, name, value)
