"""API tokens: random, shown once, stored as SHA-256, revocable.

Tokens carry 256 bits of randomness, so a plain SHA-256 (not a slow password hash) is
enough to make a leaked table useless while keeping every request's check cheap.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from shared.models import ApiToken
from shared.timeutil import utcnow

TOKEN_PREFIX = "atl_"
ROLES = ("user", "admin")


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
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at > timedelta(minutes=1):
        session.execute(update(ApiToken).where(ApiToken.id == row.id).values(last_used_at=now))
        session.commit()
    return Principal(row.owner, row.role, row.id)


def principal_for_id(session: Session, token_id: int) -> Principal | None:
    """The principal of a live token by id (web sessions keep the id, not the token)."""
    row = session.get(ApiToken, token_id)
    if row is None or row.revoked_at is not None:
        return None
    return Principal(row.owner, row.role, row.id)


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
