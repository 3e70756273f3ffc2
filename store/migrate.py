"""Schema versioning with Alembic: apply migrations (`dora migrate`) and refuse an outdated DB.

The Alembic scripts are the top-level `migrations` package, which the wheel installs next to
`store` (site-packages/migrations/), as it sits next to store/ in a checkout. They are found
beside the `store` package in use, never from the working directory (where some other project's
`migrations/` may be): `dora migrate` works wherever it runs. The Alembic config is built in
code from DORA_DATABASE_URL, so `dora migrate`, the tests and `alembic -c alembic.ini upgrade head` (repo
root) all migrate the database the service will use.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from sqlalchemy import Engine

import store
from store.settings import DatabaseSettings


def migrations_dir() -> Path:
    """The Alembic script directory: the `migrations` package installed beside `store`."""
    beside = Path(store.__file__).resolve().parent.parent / "migrations"
    if (beside / "env.py").is_file():
        return beside
    return Path(str(resources.files("migrations")))  # an install that put the packages apart


class SchemaOutdated(RuntimeError):  # noqa: N818 - a state the operator fixes by migrating, read as a sentence
    """The database is not at the code's migration head; the message says what to run."""


def alembic_config(database_url: str):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["database_url"] = database_url
    return config


def upgrade(settings: DatabaseSettings, *, revision: str = "head") -> None:
    """Apply migrations up to `revision` on the settings' database."""
    from alembic import command

    from store.db import build_engine

    engine = build_engine(settings.database_url)  # also creates a SQLite file's folder
    engine.dispose()
    command.upgrade(alembic_config(settings.database_url), revision)


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("")).get_current_head()


def check_schema(engine: Engine) -> None:
    """Raise SchemaOutdated unless the database is at the newest migration."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    head = head_revision()
    if current != head:
        state = "not migrated" if current is None else f"at revision {current}, the code needs {head}"
        raise SchemaOutdated(
            f"database {engine.url.render_as_string(hide_password=True)} is {state}: run `dora migrate`"
        )
