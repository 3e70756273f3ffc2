"""Which of the two supported brokers a broker URL names, decided in one place.

The service runs on Redis (production) or on kombu's SQLAlchemy transport (the embedded,
one-machine setup), and a few settings differ between them: Redis takes socket timeouts and a
visibility timeout, the SQL transport has no fanout exchanges (no remote control) and keeps
delivered messages until compacted. Every such choice asks `broker_kind`, so a new URL scheme is
recognised (or refused, with a message that says what is supported) everywhere at once.
"""

from __future__ import annotations

import enum

REDIS_SCHEMES = ("redis", "rediss", "redis+socket")  # kombu's Redis transport: TCP, TLS, a Unix socket
SQLALCHEMY_PREFIXES = ("sqla", "sqlalchemy")  # kombu's SQLAlchemy transport: `sqla+<database URL>`


class BrokerKind(enum.Enum):
    REDIS = "redis"
    SQLALCHEMY = "sqlalchemy"


def broker_kind(url: str) -> BrokerKind:
    """The broker a URL names; ValueError for any other (the message names the scheme, never the
    URL, which may hold a password)."""
    scheme, separator, _ = url.partition("://")
    if not separator:
        raise ValueError("the broker URL (DORA_BROKER_URL) has no scheme: use redis://, rediss:// or "
                         "sqla+<database URL>, such as sqla+sqlite:///./var/broker.db")
    scheme = scheme.lower()
    if scheme in REDIS_SCHEMES:
        return BrokerKind.REDIS
    transport, plus, database = scheme.partition("+")
    if transport in SQLALCHEMY_PREFIXES and plus and database:
        return BrokerKind.SQLALCHEMY
    raise ValueError(f"unsupported broker URL scheme {scheme!r} (DORA_BROKER_URL): use redis://, rediss:// "
                     "or sqla+<database URL>, such as sqla+sqlite:///./var/broker.db")
