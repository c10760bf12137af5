"""Logging out and the leaderboard: the table of revoked tokens, an index
per leaderboard order, and the count of users who have played (the
win-rate leaderboard's X-Total-Count).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

COUNTS = ("victory_count", "loss_count", "session_count", "total_time")
PLAYED = "victory_count > 0 OR loss_count > 0"
# As models.win_rate writes it, so that the planners match the index.
WIN_RATE = (
    "CAST(victory_count AS FLOAT) / (CAST(victory_count AS FLOAT) + CAST(loss_count AS FLOAT))"
)


def upgrade():
    op.create_table(
        "revoked_tokens",
        sa.Column("jti", sa.String(64), primary_key=True),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_index("ix_revoked_tokens_expires_at", "revoked_tokens", ["expires_at"])
    for name in COUNTS:
        op.create_index(f"stats_by_{name}", "stats", [sa.text(f"{name} DESC"), "user_id"])
    op.create_index(
        "stats_by_win_rate",
        "stats",
        [sa.text(f"({WIN_RATE}) DESC"), "user_id"],
        sqlite_where=sa.text(PLAYED),
        postgresql_where=sa.text(PLAYED),
    )
    with op.batch_alter_table("user_count") as table:
        table.add_column(sa.Column("with_games", sa.BigInteger, nullable=False, server_default="0"))
    op.execute(f"UPDATE user_count SET with_games = (SELECT COUNT(*) FROM stats WHERE {PLAYED})")


def downgrade():
    with op.batch_alter_table("user_count") as table:
        table.drop_column("with_games")
    for name in (*COUNTS, "win_rate"):
        op.drop_index(f"stats_by_{name}", "stats")
    op.drop_table("revoked_tokens")
