"""Shadow scoring results, and the media URI of each worker decision (for re-scoring after a model change).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30

A new table and a nullable column: decisions stored before this revision keep no URI (re-scoring reports and
skips them), and a worker of the previous release keeps writing while the schema is ahead of it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("source_uri", sa.String(length=4096), nullable=True))
    op.create_table(
        "shadow_results",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("decision_id", sa.Integer(), nullable=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("video_id", sa.String(256), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("primary_model_name", sa.String(128), nullable=False),
        sa.Column("primary_model_version", sa.String(128), nullable=False),
        sa.Column("primary_score", sa.Float(), nullable=True),
        sa.Column("primary_decision", sa.String(16), nullable=False),
        sa.Column("shadow_model_name", sa.String(128), nullable=False),
        sa.Column("shadow_model_version", sa.String(128), nullable=False),
        sa.Column("shadow_score", sa.Float(), nullable=True),
        sa.Column("shadow_decision", sa.String(16), nullable=False),
        sa.Column("shadow_review_threshold", sa.Float(), nullable=False),
        sa.Column("shadow_flag_threshold", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["decision_id"], ["decisions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_shadow_results_created_at", "shadow_results", ["created_at"])
    op.create_index("ix_shadow_results_tenant_created_at", "shadow_results", ["tenant", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_shadow_results_tenant_created_at", table_name="shadow_results")
    op.drop_index("ix_shadow_results_created_at", table_name="shadow_results")
    op.drop_table("shadow_results")
    # Native DROP COLUMN (SQLite >= 3.35), never a batch rebuild: rebuilding `decisions` drops the old table,
    # and with foreign keys on that cascades to every frame_hashes row.
    with op.batch_alter_table("decisions", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("source_uri")
