"""Throttles counted in the shared database: failed logins by username, and
sign-ups and logins by client address, in one table of recent events
(models.recent_events), so that every server counts alike. The failed
logins of login_failures move there, and that table goes.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "recent_events",
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("slot", sa.Integer, primary_key=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("pending", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_index("ix_recent_events_at", "recent_events", ["at"])
    # Slots were numbered from 1 to 10; they are 0 to 9 now.
    op.execute(
        "INSERT INTO recent_events (kind, key, slot, at, pending)"
        " SELECT 'login-failure', username, slot - 1, at, checking FROM login_failures"
    )
    op.drop_table("login_failures")


def downgrade():
    op.create_table(
        "login_failures",
        sa.Column("username", sa.String(32), primary_key=True),
        sa.Column("slot", sa.Integer, primary_key=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("checking", sa.Boolean, nullable=False),
    )
    op.create_index("ix_login_failures_at", "login_failures", ["at"])
    op.execute(
        "INSERT INTO login_failures (username, slot, at, checking)"
        " SELECT key, slot + 1, at, pending FROM recent_events WHERE kind = 'login-failure'"
    )
    op.drop_table("recent_events")
