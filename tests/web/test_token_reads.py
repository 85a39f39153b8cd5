"""Token checks on the read path (shared.tokens.read_principal): one read per request,
nothing cached, so revocation holds on the very next request; the once-a-minute use note;
503 when the database is gone, as for any read."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from shared.db import session_scope
from shared.jobs import new_job_id
from shared.models import ApiToken
from shared.timeutil import utcnow
from shared.tokens import TOUCH_EVERY, create_token, read_principal, revoke_token
from web import create_app


def _auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def token_client(settings):
    return create_app(
        {"ATELIER_SETTINGS": dataclasses.replace(settings, auth="token")}
    ).test_client()


def _new_token(settings, owner: str = "ann", role: str = "user") -> tuple[int, str]:
    with session_scope(settings.database_url) as session:
        row, plain = create_token(session, owner, role)
        return row.id, plain


def _last_used(settings, token_id: int):
    with session_scope(settings.database_url) as session:
        return session.scalar(select(ApiToken.last_used_at).where(ApiToken.id == token_id))


def test_a_revoked_token_is_refused_by_the_very_next_request(token_client, settings):
    _, token = _new_token(settings)
    assert token_client.get("/api/v1/jobs", headers=_auth(token)).status_code == 200
    with session_scope(settings.database_url) as session:
        assert revoke_token(session, token) == 1
    answer = token_client.get("/api/v1/jobs", headers=_auth(token))
    assert answer.status_code == 401 and answer.get_json()["error"]["code"] == "unauthorized"


def test_the_principal_is_the_tokens_owner_and_role(settings):
    token_id, token = _new_token(settings, "bob", "admin")
    found = read_principal(settings.database_url, token)
    assert (found.owner, found.role, found.token_id) == ("bob", "admin", token_id)
    assert read_principal(settings.database_url, token + "x") is None
    assert read_principal(settings.database_url, "not-a-token") is None


def test_use_is_noted_at_most_once_a_minute(token_client, settings):
    token_id, token = _new_token(settings)
    assert _last_used(settings, token_id) is None
    assert token_client.get("/api/v1/jobs", headers=_auth(token)).status_code == 200
    first = _last_used(settings, token_id)
    assert first is not None and utcnow() - first < TOUCH_EVERY
    assert token_client.get("/api/v1/jobs", headers=_auth(token)).status_code == 200
    assert _last_used(settings, token_id) == first  # within the minute: no write
    earlier = utcnow() - 2 * TOUCH_EVERY
    with session_scope(settings.database_url) as session:
        session.execute(
            update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=earlier)
        )
    assert token_client.get("/api/v1/jobs", headers=_auth(token)).status_code == 200
    assert _last_used(settings, token_id) - earlier > timedelta(seconds=60)


@pytest.mark.parametrize("fresh_db_url", ["sqlite"], indirect=True)
def test_a_token_check_without_a_database_answers_503(settings):
    gone = dataclasses.replace(
        settings, auth="token", database_url="postgresql+psycopg://atelier@127.0.0.1:1/x"
    )
    client = create_app({"ATELIER_SETTINGS": gone, "TESTING": True}).test_client()
    answer = client.get(f"/api/v1/jobs/{new_job_id()}", headers=_auth("atl_" + "a" * 43))
    assert answer.status_code == 503, answer.get_data(as_text=True)
    assert answer.get_json()["error"]["code"] == "unavailable"
