"""The database's schema: Alembic's migrations (migrations/), run to the newest
revision by every server and worker at start-up, and by `./run.sh migrate`.

Under the schema lock (database.schema_lock), so that processes starting at
once take turns: the first upgrades, the others find it done. A database
made before migrations existed (tables, no alembic_version) is stamped with
the first revision, whose schema it has. A database at a revision this code
does not know was upgraded by newer code: the process refuses to start.
"""

import logging
import sys

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

import config
import database

log = logging.getLogger("schema")
FIRST_REVISION = "0001"


def alembic_config(connection=None):
    settings = Config()
    settings.set_main_option("script_location", str(config.PROJECT_DIR / "migrations"))
    settings.attributes["connection"] = connection
    return settings


def upgrade():
    """Brings the database to the newest revision; SystemExit if it is newer than the code."""
    with database.schema_lock() as connection:
        settings = alembic_config(connection)
        scripts = ScriptDirectory.from_config(settings)
        current = MigrationContext.configure(connection).get_current_revision()
        if current is None and inspect(connection).has_table("users"):
            log.info("a database from before migrations: stamping it %s", FIRST_REVISION)
            command.stamp(settings, FIRST_REVISION)
            current = FIRST_REVISION
        if current is not None and current not in {
            rev.revision for rev in scripts.walk_revisions()
        }:
            raise SystemExit(
                f"The database is at schema revision {current}, which this code does not "
                f"know (its newest is {scripts.get_current_head()}): it was upgraded by a "
                "newer version of the service. Run that version, or restore a backup."
            )
        if current != scripts.get_current_head():
            log.info("upgrading the schema from %s to %s", current, scripts.get_current_head())
            command.upgrade(settings, "head")


def check():
    """Whether the models and the database agree (alembic check); raises if not."""
    with database.engine().connect() as connection:
        command.check(alembic_config(connection))


if __name__ == "__main__":  # ./run.sh migrate
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    upgrade()
    print(
        f"schema at {ScriptDirectory.from_config(alembic_config()).get_current_head()}",
        file=sys.stderr,
    )
