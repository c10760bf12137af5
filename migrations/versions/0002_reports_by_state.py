"""An index of reports by state: a 202's Retry-After counts the unfinished
reports queued before it, which otherwise reads every report.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    op.create_index("reports_by_state", "reports", ["state", "id"])


def downgrade():
    op.drop_index("reports_by_state", table_name="reports")
