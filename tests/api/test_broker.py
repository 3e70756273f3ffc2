"""`broker_kind`: the one place a broker URL's scheme is read (store/broker.py)."""

from __future__ import annotations

import pytest

from store.broker import BrokerKind, broker_kind


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "rediss://:secret@cache:6380/1",
                                 "REDIS://host/0", "redis+socket:///run/redis.sock"])
def test_redis_urls(url):
    assert broker_kind(url) is BrokerKind.REDIS


@pytest.mark.parametrize("url", ["sqla+sqlite:///./var/broker.db", "sqlalchemy+postgresql://u:p@db/broker",
                                 "sqla+postgresql+psycopg://u:p@db/broker"])
def test_sqlalchemy_urls(url):
    assert broker_kind(url) is BrokerKind.SQLALCHEMY


@pytest.mark.parametrize("url", ["amqp://guest:secret@rabbit//", "memory://", "sqla://nothing", "sqlite:///x.db",
                                 "redisx://host/0"])
def test_another_scheme_is_refused_with_what_is_supported_and_no_password(url):
    with pytest.raises(ValueError, match=r"unsupported broker URL scheme .*redis://, rediss:// or sqla\+") as error:
        broker_kind(url)
    assert "secret" not in str(error.value)


def test_a_url_without_a_scheme_is_refused():
    with pytest.raises(ValueError, match="has no scheme"):
        broker_kind("localhost:6379")
