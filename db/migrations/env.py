"""Alembic environment for Kensa: one locked transaction per upgrade (see db.migrate)."""

from logging.config import fileConfig

from alembic import context

from db.migrate import check_foreign_keys, lock_for_migration, migration_engine, render_item
from db.models import Base
from db.session import database_url

config = context.config

# Only the alembic CLI configures logging; a programmatic upgrade() leaves the app's alone.
if config.cmd_opts is not None and config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

url = (
    config.attributes.get("url")
    or context.get_x_argument(as_dictionary=True).get("url")
    or database_url()
)
options = {
    "target_metadata": Base.metadata,
    "render_as_batch": True,  # SQLite cannot ALTER most things: copy-and-move tables instead
    "compare_type": True,
    "render_item": render_item,
    "transactional_ddl": True,
}


def run_migrations_offline() -> None:
    context.configure(url=url, literal_binds=True, **options)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = migration_engine(url)
    try:
        # Our own transaction (alembic sees it as external and does not manage it): the lock
        # comes before alembic reads the current revision, and everything commits at once.
        with engine.begin() as connection:
            lock_for_migration(connection)
            context.configure(connection=connection, **options)
            context.run_migrations()
            check_foreign_keys(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
