"""Job ids in the path are checked before any query: junk is a 404, never a 500.

PostgreSQL refuses a NUL byte in a text parameter, so ``/api/v1/jobs/%00`` used to raise
inside the database driver.
"""

from __future__ import annotations

import pytest

JUNK_IDS = ["%00", "a%00b", "%01" * 32, "0" * 31 + "%00", "x" * 300, "%C0%AF"]


@pytest.mark.parametrize("junk", JUNK_IDS)
def test_junk_job_ids_are_not_found_on_every_route(client, junk):
    for method, path in [
        ("GET", f"/api/v1/jobs/{junk}"),
        ("DELETE", f"/api/v1/jobs/{junk}"),
        ("POST", f"/api/v1/jobs/{junk}/cancel"),
        ("GET", f"/api/v1/jobs/{junk}/files/result.png"),
        ("GET", f"/jobs/{junk}"),
        ("GET", f"/jobs/{junk}/charts"),
    ]:
        response = client.open(path, method=method)
        assert response.status_code == 404, (method, path, response.status_code)
        response.close()
