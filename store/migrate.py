"""Schema versioning with Alembic: apply migrations (`dora migrate`) and refuse an outdated DB.

The Alembic scripts live in `store/migrations/` and ship inside the installed package (wheel
or editable), so they are found from the `store` package, never from the working directory:
`dora migrate` works wherever it runs. The Alembic config is built in code from Settings, so
`dora migrate`, the tests and `alembic -c alembic.ini upgrade head` (repo root) all migrate
the database the service will use.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from sqlalchemy import Engine

from store.settings import Settings


def migrations_dir() -> Path:
    """The Alembic script directory inside the installed `store` package."""
    return Path(str(resources.files("store") / "migrations"))


class SchemaOutdated(RuntimeError):
    """The database is not at the code's migration head; the message says what to run."""


def alembic_config(database_url: str):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["database_url"] = database_url
    return config


def upgrade(settings: Settings, *, revision: str = "head") -> None:
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
