"""Tenants and their API keys. Only a sha256 of each key is stored; the key is shown once.

sha256 (not a slow password hash) is right here: keys are 256-bit random secrets, so there is
nothing to brute-force, and every request must look its key up fast.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from store.ids import new_id
from store.models import ApiKey, Tenant, utcnow

KEY_PREFIX = "sk-dora-"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class NewKey:
    key: str  # the secret: print it once, it is not stored
    key_id: str
    tenant_id: str


def find_tenant(session: Session, *, name: str) -> Tenant | None:
    return session.scalar(select(Tenant).where(Tenant.name == name))


def get_or_create_tenant(session: Session, *, name: str) -> Tenant:
    tenant = find_tenant(session, name=name)
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


@dataclass(frozen=True)
class KeyInfo:
    """What an operator may see of a key: never the key itself, nor its hash."""

    key_id: str
    tenant_id: str
    tenant_name: str
    prefix: str  # the key's first characters ("sk-dora-AbCdEf"), to tell keys apart
    created_at: datetime
    revoked_at: datetime | None


def _key_infos(session: Session, query) -> list[KeyInfo]:
    rows = session.execute(query.join(Tenant, Tenant.id == ApiKey.tenant_id).order_by(Tenant.name, ApiKey.created_at,
                                                                                    ApiKey.id))
    return [KeyInfo(key_id=key.id, tenant_id=key.tenant_id, tenant_name=name, prefix=key.prefix,
                    created_at=key.created_at, revoked_at=key.revoked_at) for key, name in rows]


def list_api_keys(session: Session, *, tenant_name: str | None = None) -> list[KeyInfo]:
    """Every key (of one tenant, by name), revoked ones too, by tenant then age."""
    query = select(ApiKey, Tenant.name)
    if tenant_name is not None:
        query = query.where(Tenant.name == tenant_name)
    return _key_infos(session, query)


@dataclass(frozen=True)
class Revoked:
    key: KeyInfo
    already: bool  # it had been revoked before: its revoked_at is unchanged


def revoke_api_key(session: Session, *, key_id: str, now: datetime | None = None) -> Revoked | None:
    """Set the key's revoked_at (kept if it was already revoked); commits. None: no such key.

    API processes that cached the key's lookup keep accepting it until their entry expires,
    at most `auth_cache_seconds` (api/authentication.py)."""
    changed = session.execute(update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                              .values(revoked_at=now or utcnow()),
                              execution_options={"synchronize_session": False}).rowcount
    session.commit()
    found = _key_infos(session, select(ApiKey, Tenant.name).where(ApiKey.id == key_id))
    return Revoked(key=found[0], already=changed == 0) if found else None
