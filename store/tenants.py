"""Tenants and their API keys. Only a sha256 of each key is stored; the key is shown once.

sha256 (not a slow password hash) is right here: keys are 256-bit random secrets, so there is
nothing to brute-force, and every request must look its key up fast.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.ids import new_id
from store.models import ApiKey, Tenant

KEY_PREFIX = "sk-dora-"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class NewKey:
    key: str  # the secret: print it once, it is not stored
    key_id: str
    tenant_id: str


def get_or_create_tenant(session: Session, *, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(id=new_id("tenant"), name=name)
        session.add(tenant)
        session.flush()
    return tenant


def create_api_key(session: Session, *, tenant_name: str) -> NewKey:
    """A new key for `tenant_name` (created if missing); commits."""
    tenant = get_or_create_tenant(session, name=tenant_name)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(id=new_id("key"), tenant_id=tenant.id, key_hash=hash_key(key), prefix=key[:14])
    session.add(row)
    session.commit()
    return NewKey(key=key, key_id=row.id, tenant_id=tenant.id)


def tenant_for_key(session: Session, *, key: str) -> Tenant | None:
    """The tenant owning an unrevoked `key`, or None."""
    query = (
        select(Tenant)
        .join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    )
    return session.scalar(query)
