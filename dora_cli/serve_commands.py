"""`dora serve`: the inference server (serve/), uvicorn on DORA_SERVE_HOST:DORA_SERVE_PORT.

It refuses to start without DORA_INFERENCE_SECRET, with a DORA_SERVE_BASE_MODELS name that is not
registered, or with a registered local path that does not exist; an outdated database schema stops
it too (its registry row needs the current one), an unreachable database only warns (it serves,
and its heartbeat registers it once the database is back). torch and the models are imported here,
in this command only: `dora api` never loads them.
"""

from __future__ import annotations

import argparse
import logging
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser("serve", help="run an inference server: base models held once, adapters "
                                                "applied unmerged (the API forwards completions to it)")
    serve.add_argument("--host", default=None, help="bind address (default: DORA_SERVE_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default: DORA_SERVE_PORT or 8100)")
    serve.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    import os

    from pydantic import ValidationError

    if args.host is not None:
        os.environ["DORA_SERVE_HOST"] = args.host
    if args.port is not None:
        os.environ["DORA_SERVE_PORT"] = str(args.port)
    from serve.settings import MissingSecretError, get_serve_settings, require_secret

    try:
        require_secret(settings := get_serve_settings())
    except (ValidationError, MissingSecretError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from store.base_models import missing_local_sources

    served = settings.served_models()
    if problems := missing_local_sources({name: settings.base_models[name] for name in served}):
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    if not served:
        print("error: no base model to serve: register some in DORA_BASE_MODELS", file=sys.stderr)
        return 2
    if (problem := _schema_problem(settings)) is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    import uvicorn

    logging.basicConfig(format="%(levelname)s:     %(name)s: %(message)s")
    logging.getLogger("serve").setLevel(settings.log_level.upper())
    uvicorn.run("serve.app:create_app", factory=True, host=settings.serve_host, port=settings.serve_port,
                log_level=settings.log_level, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS)
    return 0


# streams still open at shutdown are cut after this long (the API answers them with an error and
# retries new requests elsewhere)
GRACEFUL_SHUTDOWN_SECONDS = 10


def _schema_problem(settings) -> str | None:
    from sqlalchemy.exc import SQLAlchemyError

    from store.db import get_engine
    from store.migrate import SchemaOutdated, check_schema

    try:
        check_schema(get_engine(settings))
    except SchemaOutdated as error:
        return str(error)
    except SQLAlchemyError as error:
        print(f"warning: the database is unreachable ({str(error).splitlines()[0][:160]}); starting anyway, "
              "registering once it is back", file=sys.stderr)
    return None
