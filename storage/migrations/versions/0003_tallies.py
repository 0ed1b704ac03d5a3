"""Status without reading the history: the tallies table (with its triggers on jobs), studies.tallied, and indexes
for the last hour's instances, finished jobs and associations.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    from storage import db

    op.add_column("studies", sa.Column("tallied", sa.Integer()))
    op.create_table(
        "tallies",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("value", sa.Integer(), nullable=False, server_default="0"),
    )
    op.create_index("ix_instances_received", "instances", ["received_at"])
    op.create_index("ix_jobs_finished", "jobs", ["finished"])
    op.create_index("ix_associations_started", "associations", ["started"])
    db.install_tallies(op.get_bind())  # one pass over what is there; from then on kept as it changes
