"""Record where a decision's thresholds came from (settings, ensemble, model, default).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30

A nullable column: decisions stored before it stay readable (their source is unknown, null), and a worker of
the previous release keeps writing while the schema is ahead of it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("thresholds_source", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.drop_column("thresholds_source")
