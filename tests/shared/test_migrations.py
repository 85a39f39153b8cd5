"""The Alembic schema is exactly the models' schema, and it migrates down and up again."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from shared import migrate
from shared.db import get_engine
from shared.models import Base
from tests.conftest import BACKENDS


@pytest.mark.parametrize("fresh_db_url", BACKENDS, indirect=True)
def test_migrated_schema_matches_models(fresh_db_url):
    migrate.upgrade(fresh_db_url)
    with get_engine(fresh_db_url).connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    assert diff == []


@pytest.mark.parametrize("fresh_db_url", BACKENDS, indirect=True)
def test_downgrade_to_base_and_upgrade_again(fresh_db_url):
    migrate.upgrade(fresh_db_url)
    migrate.downgrade(fresh_db_url, "base")
    assert set(inspect(get_engine(fresh_db_url)).get_table_names()) <= {"alembic_version"}
    migrate.upgrade(fresh_db_url)
    assert {"jobs", "job_files"} <= set(inspect(get_engine(fresh_db_url)).get_table_names())
