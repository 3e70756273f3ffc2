"""Alembic environment: the database URL comes from store.settings (DORA_DATABASE_URL).

`store.migrate.upgrade` passes the URL in `config.attributes`; the plain `alembic` command
falls back to Settings. SQLite runs in batch mode so ALTERs work there too.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from store.db import build_engine
from store.models import Base
from store.settings import Settings

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def database_url() -> str:
    return config.attributes.get("database_url") or Settings().database_url


def run_migrations_offline() -> None:
    url = database_url()
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True,
                      render_as_batch=url.startswith("sqlite"))
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = build_engine(database_url())
    with engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            # A batch migration that SQLite cannot ALTER in place copies the table and drops the old one;
            # with foreign keys on (store/db.py turns them on for every connection) the drop would
            # cascade, e.g. every job's events gone with the old `jobs`. Off for the migration (it only
            # takes effect outside a transaction, hence the commit), as Alembic's batch docs advise.
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()
        context.configure(connection=connection, target_metadata=target_metadata,
                          render_as_batch=connection.dialect.name == "sqlite")
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
