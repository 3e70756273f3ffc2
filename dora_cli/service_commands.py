"""Service commands: `dora api`, `dora migrate`, `dora keys create --tenant NAME`, `dora keys list
[--tenant NAME] [--json]` and `dora keys revoke KEY_ID`.

`keys list` shows what an operator may know of a key (id, tenant, the prefix it starts with,
when it was created and revoked), never the key: only its sha256 is stored.

Imports of the web stack and SQLAlchemy happen inside the run functions, so `dora --help`
stays fast and `dora train` never loads them (and `dora api` never loads torch).
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    api = subparsers.add_parser("api", help="serve the REST API with uvicorn")
    api.add_argument("--host", default=None, help="bind address (default: DORA_HOST or 127.0.0.1)")
    api.add_argument("--port", type=int, default=None, help="port (default: DORA_PORT or 8000)")
    api.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    api.set_defaults(run=run_api)

    migrate = subparsers.add_parser("migrate", help="apply database migrations (DORA_DATABASE_URL)")
    migrate.add_argument("--revision", default="head", help="target revision (default: head)")
    migrate.set_defaults(run=run_migrate)

    keys = subparsers.add_parser("keys", help="manage API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="create an API key; prints it once, alone on the last line")
    create.add_argument("--tenant", required=True, help="tenant name (created if it does not exist)")
    create.set_defaults(run=run_keys_create)
    listing = key_commands.add_parser("list", help="list API keys: id, tenant, prefix, created, revoked (not the key)")
    listing.add_argument("--tenant", default=None, help="only this tenant's keys")
    listing.add_argument("--json", action="store_true", help="one JSON object per key, one per line")
    listing.set_defaults(run=run_keys_list)
    revoke = key_commands.add_parser("revoke", help="revoke an API key by its id (see `dora keys list`)")
    revoke.add_argument("key_id", metavar="KEY_ID", help="the key's id, e.g. key-...")
    revoke.set_defaults(run=run_keys_revoke)


def run_api(args: argparse.Namespace) -> int:
    import uvicorn
    from sqlalchemy.exc import SQLAlchemyError

    from store.db import get_engine
    from store.migrate import SchemaOutdated, check_schema
    from store.settings import get_settings

    settings = get_settings()
    _warn_of_missing_base_models(settings)
    try:
        check_schema(get_engine(settings))  # fail here with one clear line, not a traceback
    except SchemaOutdated as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except SQLAlchemyError as error:  # unreachable: start anyway, the app answers 503 and waits for it
        print(f"warning: the database is unreachable ({str(error).splitlines()[0][:160]}); starting anyway",
              file=sys.stderr)
    # Open event streams would hold a graceful shutdown forever: after this many seconds the
    # remaining connections are closed (clients reconnect with Last-Event-ID to another process).
    uvicorn.run("api.app:create_app", factory=True, host=args.host or settings.host, port=args.port or settings.port,
                workers=args.workers, log_level=settings.log_level,
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS)
    return 0


GRACEFUL_SHUTDOWN_SECONDS = 10


def _warn_of_missing_base_models(settings) -> None:
    """A DORA_BASE_MODELS path missing here is said at start, but does not stop the API: it never loads
    a model, and its host need not hold them (docker-compose.yml mounts /models in the worker only).
    `dora worker` and `dora up` (one machine) refuse to start instead."""
    from store.base_models import missing_local_sources

    for problem in missing_local_sources(settings.base_models):
        print(f"warning: {problem} (on this host; the workers must have it)", file=sys.stderr)


def run_migrate(args: argparse.Namespace) -> int:
    from store.migrate import upgrade
    from store.settings import DatabaseSettings

    upgrade(DatabaseSettings(), revision=args.revision)
    print(f"database migrated to {args.revision}")
    return 0


def run_keys_create(args: argparse.Namespace) -> int:
    from dora_cli.process_settings import KeysSettings
    from store.db import session_scope
    from store.tenants import create_api_key

    with session_scope(KeysSettings()) as session:
        new = create_api_key(session, tenant_name=args.tenant)
    print(f"created API key {new.key_id} for tenant '{args.tenant}' ({new.tenant_id}); it is shown only once:")
    print(new.key)
    return 0


def _when(value) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


def run_keys_list(args: argparse.Namespace) -> int:
    import json

    from dora_cli.process_settings import KeysSettings
    from store.db import session_scope
    from store.tenants import find_tenant, list_api_keys

    with session_scope(KeysSettings()) as session:
        if args.tenant is not None and find_tenant(session, name=args.tenant) is None:
            print(f"error: no tenant named '{args.tenant}'", file=sys.stderr)
            return 1
        keys = list_api_keys(session, tenant_name=args.tenant)
    rows = [{"id": k.key_id, "tenant": k.tenant_name, "tenant_id": k.tenant_id, "prefix": k.prefix,
             "created": _when(k.created_at), "revoked": _when(k.revoked_at)} for k in keys]
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    columns = ("id", "tenant", "prefix", "created", "revoked")
    table = [columns] + [tuple(row[c] or "-" for c in columns) for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    return 0


def run_keys_revoke(args: argparse.Namespace) -> int:
    from dora_cli.process_settings import KeysSettings
    from store.db import session_scope
    from store.tenants import revoke_api_key

    settings = KeysSettings()
    with session_scope(settings) as session:
        revoked = revoke_api_key(session, key_id=args.key_id)
    if revoked is None:
        print(f"error: no API key with id '{args.key_id}' (see `dora keys list`)", file=sys.stderr)
        return 1
    key = revoked.key
    what = "was already revoked" if revoked.already else "revoked"
    print(f"API key {key.key_id} ({key.prefix}...) of tenant '{key.tenant_name}' {what} at {_when(key.revoked_at)}; "
          f"API processes refuse it within {settings.auth_cache_seconds:g} s (DORA_AUTH_CACHE_SECONDS)")
    return 0
