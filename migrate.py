"""The database's schema: Alembic's migrations (migrations/), run to the newest
revision by every server and worker at start-up, and by `./run.sh migrate`.

Under the schema lock (database.schema_lock), processes starting at once take turns:
the first upgrades, the others find it done. A database made before migrations (tables,
no alembic_version) is stamped with the first revision, whose schema it has; one at a
revision this code does not know was upgraded by newer code: the process refuses to start.
"""

import logging

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
    """Brings the database to the newest revision, which it returns; SystemExit if the
    database is newer than the code."""
    with database.schema_lock() as connection:
        settings = alembic_config(connection)
        scripts = ScriptDirectory.from_config(settings)
        head = scripts.get_current_head()
        current = MigrationContext.configure(connection).get_current_revision()
        if current is None and inspect(connection).has_table("users"):
            log.info("a database from before migrations: stamping it %s", FIRST_REVISION)
            command.stamp(settings, FIRST_REVISION)
            current = FIRST_REVISION
        known = {script.revision for script in scripts.walk_revisions()}
        if current is not None and current not in known:
            raise SystemExit(
                f"The database is at schema revision {current}, which this code does not "
                f"know (its newest is {head}): it was upgraded by a newer version of the "
                "service. Run that version, or restore a backup."
            )
        if current != head:
            log.info("upgrading the schema from %s to %s", current, head)
            command.upgrade(settings, "head")
    return head


if __name__ == "__main__":  # ./run.sh migrate
    logging.basicConfig(level=logging.INFO, format=config.LOG_FORMAT)
    log.info("schema at %s", upgrade())
