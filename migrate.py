"""The database's schema: Alembic's migrations (migrations/), run to the newest
revision by every server and worker at start-up, and by `./run.sh migrate`.

Under the schema lock (database.schema_lock), processes starting at once take turns:
the first upgrades, the others find it done. A database made before migrations (tables,
no alembic_version) is stamped with the first revision, whose schema it has; one at a
revision this code does not know was upgraded by newer code: the process refuses to
start. At the newest revision, a process never imports Alembic (11 MiB); one that must
upgrade runs `python migrate.py` in a process of its own.
"""

import logging
import subprocess
import sys

from sqlalchemy import inspect, text

import config
import database

log = logging.getLogger("schema")
FIRST_REVISION = "0001"
VERSIONS = config.PROJECT_DIR / "migrations" / "versions"
# The newest revision, by the files' names ("0002_....py" is 0002; test_migrations checks it).
HEAD = max(path.name.split("_", 1)[0] for path in VERSIONS.glob("[0-9]*_*.py"))


def ensure_newest():
    """At start-up: nothing when the database is at HEAD, else the upgrade in
    a process of its own; SystemExit when that fails (its reason is in the log)."""
    with database.engine().connect() as connection:
        if inspect(connection).has_table("alembic_version"):
            query = text("SELECT version_num FROM alembic_version")
            if connection.execute(query).scalar() == HEAD:
                return
    upgraded = subprocess.run([sys.executable, str(config.PROJECT_DIR / "migrate.py")], timeout=600)
    if upgraded.returncode != 0:
        raise SystemExit(f"the schema could not be brought to revision {HEAD} (see above)")


def alembic_config(connection=None):
    from alembic.config import Config

    settings = Config()
    settings.set_main_option("script_location", str(config.PROJECT_DIR / "migrations"))
    settings.attributes["connection"] = connection
    return settings


def upgrade():
    """Brings the database to the newest revision; SystemExit if it is newer than the code."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

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


if __name__ == "__main__":  # ./run.sh migrate, and ensure_newest()
    logging.basicConfig(level=logging.INFO, format=config.LOG_FORMAT)
    upgrade()
    log.info("schema at %s", HEAD)
