"""API tokens: random, shown once, stored as SHA-256, revocable.

Tokens carry 256 bits of randomness, so a plain SHA-256 (not a slow password hash) is
enough to make a leaked table useless while keeping every request's check cheap.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.orm import Session

from shared.db import read_first, session_scope
from shared.models import ApiToken
from shared.timeutil import utcnow

TOKEN_PREFIX = "atl_"
ROLES = ("user", "admin")
TOUCH_EVERY = timedelta(minutes=1)  # last_used_at is noted at most this often


@dataclass(frozen=True)
class Principal:
    """Who a request acts for; admins see every owner's jobs."""

    owner: str
    role: str = "user"
    token_id: int | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, owner: str, role: str = "user") -> tuple[ApiToken, str]:
    """A new token row and the plaintext token (the only time it is available)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if not owner or len(owner) > 128 or not owner.replace("-", "").replace("_", "").isalnum():
        raise ValueError("owner must be 1-128 letters, digits, '-' or '_'")
    plain = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        owner=owner, role=role, token_hash=hash_token(plain), prefix=plain[:12], created_at=utcnow()
    )
    session.add(row)
    session.flush()
    return row, plain


def verify_token(session: Session, token: str) -> Principal | None:
    """The principal of a live token, or None; notes its use at most once a minute."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    row = session.scalar(
        select(ApiToken).where(
            ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None)
        )
    )
    if row is None:
        return None
    if _touch_due(row.last_used_at):
        _touch(session, row.id)
        session.commit()
    return Principal(row.owner, row.role, row.id)


_LIVE = (ApiToken.id, ApiToken.owner, ApiToken.role, ApiToken.last_used_at)
_LIVE_BY_HASH = select(*_LIVE).where(
    ApiToken.token_hash == bindparam("token_hash"), ApiToken.revoked_at.is_(None)
)
_LIVE_BY_ID = select(*_LIVE).where(
    ApiToken.id == bindparam("token_id"), ApiToken.revoked_at.is_(None)
)


def read_principal(database_url: str, token: str) -> Principal | None:
    """:func:`verify_token` for every API request: one indexed read on a pooled read
    connection, outside any transaction and the ORM (shared.db.read_first), so a request
    that checks a token costs one query, not a session's BEGIN, query and ROLLBACK.
    A revoked token is refused by the very next request. The once-a-minute note of its
    use is the only write, through a session of its own."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    row = read_first(database_url, _LIVE_BY_HASH, {"token_hash": hash_token(token)})
    return None if row is None else _principal(database_url, row)


def read_principal_by_id(database_url: str, token_id: int) -> Principal | None:
    """The principal of a live token by id, the same way (web sessions keep the id, not
    the token): a logged-in page's requests (the job page polls each second) check the
    token their session holds with one read."""
    row = read_first(database_url, _LIVE_BY_ID, {"token_id": int(token_id)})
    return None if row is None else _principal(database_url, row)


def _principal(database_url: str, row: tuple) -> Principal:
    token_id, owner, role, last_used_at = row
    if _touch_due(last_used_at):
        with session_scope(database_url) as session:
            _touch(session, token_id)
    return Principal(owner, role, token_id)


def _touch_due(last_used_at: object) -> bool:
    return last_used_at is None or utcnow() - last_used_at > TOUCH_EVERY


def _touch(session: Session, token_id: int) -> None:
    session.execute(update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=utcnow()))


def revoke_token(session: Session, ident: str) -> int:
    """Revoke by id, by printed prefix or by the token itself; returns how many were revoked."""
    clauses = [ApiToken.prefix == ident, ApiToken.token_hash == hash_token(ident)]
    if ident.isdigit():
        clauses.append(ApiToken.id == int(ident))
    result = session.execute(
        update(ApiToken)
        .where(or_(*clauses), ApiToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return result.rowcount


def list_tokens(session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.id)))
