"""Alembic's entry point: runs the migrations on the connection migrate.py
hands it (under the schema lock), or on DATABASE_URL for the alembic CLI."""

from alembic import context

import database
import models

config = context.config


def run_migrations(connection):
    context.configure(
        connection=connection,
        target_metadata=models.metadata,
        # SQLite changes a column only by copying its table: Alembic's batch mode does it.
        render_as_batch=database.SQLITE,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run_migrations(connection)
else:
    with database.engine().begin() as own_connection:
        run_migrations(own_connection)
