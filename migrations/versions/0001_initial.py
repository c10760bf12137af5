"""The schema as models.create_tables made it before migrations (commit adc47b8).

A database made then has no alembic_version table: migrate.py recognises it
by its tables and stamps it with this revision instead of running it.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# SQLite only gives AUTOINCREMENT (ids never reused) to "INTEGER PRIMARY KEY".
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
STAT_FIELDS = ("loss_count", "session_count", "total_time", "victory_count")


def upgrade():
    op.create_table(
        "users",
        sa.Column("id", Id, primary_key=True),
        sa.Column("username", sa.String(32), nullable=False, unique=True),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("email", sa.String(254)),
        sa.Column("gender", sa.String(32)),
        sa.Column("profile_pic", sa.String(2048)),
        sa.Column("token_version", sa.Integer(), nullable=False, server_default="0"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "stats",
        sa.Column("user_id", Id, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
        *(
            sa.Column(
                name,
                sa.BigInteger(),
                sa.CheckConstraint(f"{name} >= 0"),
                nullable=False,
                server_default="0",
            )
            for name in STAT_FIELDS
        ),
    )
    op.create_table(
        "reports",
        sa.Column("id", Id, primary_key=True),
        sa.Column("user_id", Id, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("published_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float()),
        sa.Column("error", sa.String(500)),
        sa.Column("pdf", sa.LargeBinary()),
        sqlite_autoincrement=True,
    )
    pending = sa.text("state = 'pending'")
    op.create_index(
        "one_pending_report_per_user",
        "reports",
        ["user_id"],
        unique=True,
        sqlite_where=pending,
        postgresql_where=pending,
    )
    op.create_index("reports_by_user_and_state", "reports", ["user_id", "state"])
    user_count = op.create_table(
        "user_count",
        sa.Column("id", sa.Integer(), sa.CheckConstraint("id = 1"), primary_key=True),
        sa.Column("n", sa.BigInteger(), nullable=False),
    )
    op.bulk_insert(user_count, [{"id": 1, "n": 0}])
    op.create_table(
        "login_failures",
        sa.Column("id", Id, primary_key=True),
        sa.Column("username", sa.String(32), nullable=False, index=True),
        sa.Column("failed_at", sa.Float(), nullable=False, index=True),
    )
    op.create_table(
        "login_attempts",
        sa.Column("id", Id, primary_key=True),
        sa.Column("username", sa.String(32), nullable=False, index=True),
        sa.Column("started_at", sa.Float(), nullable=False, index=True),
    )


def downgrade():
    for table in ("login_attempts", "login_failures", "user_count", "reports", "stats", "users"):
        op.drop_table(table)
