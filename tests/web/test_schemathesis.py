"""Property-based requests generated from our own OpenAPI description: never a 5xx.

schemathesis reads GET /api/v1/openapi.json and sends valid and invalid requests of
every operation through the real app (its WSGI interface, a real database and Redis).
Its pytest plugin does not work with this pytest, so the operations are driven with
hypothesis directly.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error

from web import create_app

EXAMPLES = 15


def test_no_operation_answers_a_server_error(settings):
    app = create_app({"ATELIER_SETTINGS": settings, "TESTING": True})
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 7
    for operation in operations:

        @given(case=operation.as_strategy())
        @hypothesis_settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case) -> None:
            case.call_and_validate(checks=[not_a_server_error])

        check()
