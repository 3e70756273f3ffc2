"""Service commands: `dora api`, `dora migrate`, `dora keys create --tenant NAME`.

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


def run_api(args: argparse.Namespace) -> int:
    import uvicorn

    from store.db import get_engine
    from store.migrate import SchemaOutdated, check_schema
    from store.settings import get_settings

    settings = get_settings()
    try:
        check_schema(get_engine(settings))  # fail here with one clear line, not a traceback
    except SchemaOutdated as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    uvicorn.run("api.app:create_app", factory=True, host=args.host or settings.host, port=args.port or settings.port,
                workers=args.workers, log_level=settings.log_level)
    return 0


def run_migrate(args: argparse.Namespace) -> int:
    from store.migrate import upgrade
    from store.settings import get_settings

    settings = get_settings()
    upgrade(settings, revision=args.revision)
    print(f"database migrated to {args.revision}")
    return 0


def run_keys_create(args: argparse.Namespace) -> int:
    from store.db import session_scope
    from store.settings import get_settings
    from store.tenants import create_api_key

    settings = get_settings()
    with session_scope(settings) as session:
        new = create_api_key(session, tenant_name=args.tenant)
    print(f"created API key {new.key_id} for tenant '{args.tenant}' ({new.tenant_id}); it is shown only once:")
    print(new.key)
    return 0
