"""Login throttling in one transaction: a username's failed logins and the
logins being checked share one table of at most ten slots per username
(models.login_failures), and the table of attempts in flight goes.

The failures of the last five minutes are kept, the newest ten of each
username, so that a throttle in force before the upgrade stays in force.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

import time

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

WINDOW = 300  # seconds: CONTRACT.md's five minutes
SLOTS = 10


def upgrade():
    op.rename_table("login_failures", "login_failures_before_0003")
    op.create_table(
        "login_failures",
        sa.Column("username", sa.String(32), primary_key=True),
        sa.Column("slot", sa.Integer, primary_key=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("checking", sa.Boolean, nullable=False),
    )
    op.create_index("ix_login_failures_at", "login_failures", ["at"])
    op.execute(
        sa.text(
            "INSERT INTO login_failures (username, slot, at, checking)"
            " SELECT username, slot, failed_at, :no FROM ("
            "  SELECT username, failed_at, ROW_NUMBER() OVER"
            "   (PARTITION BY username ORDER BY failed_at DESC) AS slot"
            "  FROM login_failures_before_0003 WHERE failed_at > :since"
            " ) AS newest WHERE slot <= :slots"
        ).bindparams(
            sa.bindparam("no", False, type_=sa.Boolean),
            since=time.time() - WINDOW,
            slots=SLOTS,
        )
    )
    op.drop_table("login_failures_before_0003")
    op.drop_table("login_attempts")


def downgrade():
    op.create_table(
        "login_attempts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("username", sa.String(32), nullable=False, index=True),
        sa.Column("started_at", sa.Float, nullable=False, index=True),
    )
    op.rename_table("login_failures", "login_failures_after_0003")
    op.create_table(
        "login_failures",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("username", sa.String(32), nullable=False, index=True),
        sa.Column("failed_at", sa.Float, nullable=False, index=True),
    )
    op.execute(
        "INSERT INTO login_failures (username, failed_at)"
        " SELECT username, at FROM login_failures_after_0003 WHERE NOT checking"
    )
    op.drop_table("login_failures_after_0003")
