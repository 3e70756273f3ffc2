"""`dora keys create | list | revoke`, run through the CLI's entry point (`main([...])`) on the
suite's database, as `DORA_DATABASE_URL` points an operator's shell at it: list shows id, tenant,
prefix, created and revoked, never a key; a revoked key is refused once the API's key cache
(DORA_AUTH_CACHE_SECONDS) has expired."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from dora_cli.main import main
from store.settings import get_settings


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def dora(settings, monkeypatch, capsys):
    """`dora keys ...` as the operator runs it, with DORA_DATABASE_URL set to the suite's database."""
    monkeypatch.setenv("DORA_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("DORA_STORAGE_URL", settings.storage_url)
    get_settings.cache_clear()

    def run(*args: str) -> Ran:
        capsys.readouterr()
        code = main(["keys", *args])
        out = capsys.readouterr()
        return Ran(code, out.out, out.err)

    yield run
    get_settings.cache_clear()


def _create(dora, tenant: str) -> tuple[str, str]:
    created = dora("create", "--tenant", tenant)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    return created.stdout.split("created API key ", 1)[1].split()[0], key


def test_keys_list_shows_every_key_of_a_tenant_but_never_the_key(dora):
    acme, other = f"acme-{uuid.uuid4().hex[:8]}", f"other-{uuid.uuid4().hex[:8]}"
    (first_id, first), (second_id, second) = _create(dora, acme), _create(dora, acme)
    other_id, other_key = _create(dora, other)
    listed = dora("list", "--tenant", acme, "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [row["id"] for row in rows] == [first_id, second_id]
    assert {row["tenant"] for row in rows} == {acme} and all(row["revoked"] is None for row in rows)
    assert [row["prefix"] for row in rows] == [first[:14], second[:14]]
    assert all(row["created"].endswith("Z") for row in rows)
    table = dora("list")
    assert table.stdout.splitlines()[0].split() == ["id", "tenant", "prefix", "created", "revoked"]
    assert first_id in table.stdout and other_id in table.stdout
    for output in (listed.stdout, table.stdout):
        for key in (first, second, other_key):
            assert key not in output and key[14:] not in output  # only the prefix is ever shown
    missing = dora("list", "--tenant", f"nobody-{uuid.uuid4().hex[:8]}")
    assert missing.returncode == 1 and "no tenant named" in missing.stderr


def test_a_revoked_key_is_refused_within_the_auth_cache_ttl(dora, settings):
    ttl = 0.5
    key_id, key = _create(dora, f"revoke-{uuid.uuid4().hex[:8]}")
    headers = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(settings.model_copy(update={"auth_cache_seconds": ttl}))) as client:
        assert client.get("/v1/models", headers=headers).status_code == 200  # cached from here
        revoked = dora("revoke", key_id)
        assert revoked.returncode == 0, revoked.stderr
        assert f"API key {key_id}" in revoked.stdout and " revoked at " in revoked.stdout
        time.sleep(ttl + 0.1)
        response = client.get("/v1/models", headers=headers)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    listed = [json.loads(line) for line in dora("list", "--json").stdout.splitlines()]
    assert next(row for row in listed if row["id"] == key_id)["revoked"] is not None
    again = dora("revoke", key_id)
    assert again.returncode == 0 and "was already revoked" in again.stdout
    unknown = dora("revoke", "key-doesnotexist")
    assert unknown.returncode == 1 and "no API key with id 'key-doesnotexist'" in unknown.stderr
