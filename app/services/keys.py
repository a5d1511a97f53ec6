"""Organizations and API keys. A key is shown once; only its sha256 is stored."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.base import new_id, utcnow
from app.db.models import ApiKey, Organization

KEY_PREFIX = "lf-"
# Writing last_used_at on every request would serialize SQLite; once a minute is enough.
LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class CreatedKey:
    key: str
    record: ApiKey


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def get_or_create_organization(session: Session, name: str) -> Organization:
    organization = session.scalar(select(Organization).where(Organization.name == name))
    if organization is None:
        organization = Organization(id=new_id("org"), name=name)
        session.add(organization)
        session.flush()
    return organization


def create_key(session: Session, organization: Organization, name: str = "") -> CreatedKey:
    """Create a key for `organization`; the plaintext is returned here and nowhere else."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    record = ApiKey(
        id=new_id("key"),
        organization_id=organization.id,
        name=name,
        key_hash=hash_key(key),
        prefix=key[: len(KEY_PREFIX) + 4],
        last4=key[-4:],
    )
    session.add(record)
    session.flush()
    return CreatedKey(key=key, record=record)


def authenticate(session: Session, key: str) -> ApiKey | None:
    """The live key record for `key`, or None. The stored hash is compared in constant time."""
    digest = hash_key(key)
    record = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    if record is None or not hmac.compare_digest(record.key_hash, digest):
        return None
    if record.revoked_at is not None:
        return None
    now = utcnow()
    if record.last_used_at is None or now - record.last_used_at > LAST_USED_RESOLUTION:
        record.last_used_at = now
        session.commit()
    return record


def list_keys(session: Session, organization_name: str | None = None) -> list[tuple[ApiKey, str]]:
    """Every key with its organization's name, oldest first."""
    stmt = (
        select(ApiKey, Organization.name)
        .join(Organization, Organization.id == ApiKey.organization_id)
        .order_by(ApiKey.created_at)
    )
    if organization_name is not None:
        stmt = stmt.where(Organization.name == organization_name)
    return [(key, name) for key, name in session.execute(stmt).all()]


def revoke_key(session: Session, key_id: str) -> bool:
    record = session.get(ApiKey, key_id)
    if record is None:
        return False
    if record.revoked_at is None:
        record.revoked_at = utcnow()
    return True
