"""Decision revisions (`dfguard rescore`): the history of re-decided videos, and the outbox of their events.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

A new table and a nullable column (null: revision 1), so every stored decision stays what it was and a
worker of the previous release keeps writing while the schema is ahead of it. Indexes for a large store:
`decisions.decided_at` (rescore's --since/--until), `frame_hashes.decision_id` (a re-decision rewrites one
decision's hashes) and the outbox's pending rows in id order.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("revision", sa.Integer(), nullable=True))
    op.create_table(
        "decision_revisions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("decision_id", sa.Integer(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("flag_event_id", sa.String(64), nullable=False),
        sa.Column("supersedes", sa.String(64), nullable=True),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(128), nullable=False),
        sa.Column("review_threshold", sa.Float(), nullable=False),
        sa.Column("flag_threshold", sa.Float(), nullable=False),
        sa.Column("thresholds_source", sa.String(16), nullable=True),
        sa.Column("aggregation", sa.String(32), nullable=False),
        sa.Column("flag_event", sa.Text(), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("emitted_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["decision_id"], ["decisions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("decision_id", "revision", name="uq_decision_revisions_decision_revision"),
    )
    op.create_index("ix_decision_revisions_emitted_at_id", "decision_revisions", ["emitted_at", "id"])
    op.create_index("ix_decisions_decided_at", "decisions", ["decided_at"])
    op.create_index("ix_frame_hashes_decision_id", "frame_hashes", ["decision_id"])


def downgrade() -> None:
    op.drop_index("ix_frame_hashes_decision_id", table_name="frame_hashes")
    op.drop_index("ix_decisions_decided_at", table_name="decisions")
    op.drop_index("ix_decision_revisions_emitted_at_id", table_name="decision_revisions")
    op.drop_table("decision_revisions")
    # Native DROP COLUMN (SQLite >= 3.35), never a batch rebuild: rebuilding `decisions` drops the old table,
    # and with foreign keys on that cascades to every frame_hashes and shadow_results row.
    with op.batch_alter_table("decisions", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("revision")
