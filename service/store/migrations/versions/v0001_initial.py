"""The decision store as `create_all` made it before migrations existed: decisions and frame_hashes.

Revision ID: 0001
Revises:
Create Date: 2026-11-30

Databases made by `create_all` are stamped with this revision (their tables are exactly these), so their
data stays where it is; `tests/test_migrations.py` compares this revision with `create_all`'s schema.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "decisions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("video_id", sa.String(256), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(128), nullable=False),
        sa.Column("review_threshold", sa.Float(), nullable=False),
        sa.Column("flag_threshold", sa.Float(), nullable=False),
        sa.Column("aggregation", sa.String(32), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("source_event_id", sa.String(128), nullable=False),
        sa.Column("flag_event_id", sa.String(64), nullable=False),
        sa.Column("timings_ms", sa.JSON(), nullable=False),
        sa.Column("flag_event", sa.Text(), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant", "video_id", name="uq_decisions_tenant_video"),
    )
    op.create_index("ix_decisions_sha256_origin", "decisions", ["sha256", "origin"])
    op.create_table(
        "frame_hashes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("decision_id", sa.Integer(), nullable=False),
        sa.Column("flagged", sa.Boolean(), nullable=False),
        sa.Column("hash", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["decision_id"], ["decisions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_frame_hashes_flagged_id", "frame_hashes", ["flagged", "id"])


def downgrade() -> None:
    op.drop_index("ix_frame_hashes_flagged_id", table_name="frame_hashes")
    op.drop_table("frame_hashes")
    op.drop_index("ix_decisions_sha256_origin", table_name="decisions")
    op.drop_table("decisions")
