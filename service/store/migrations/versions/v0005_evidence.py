"""Evidence pages: each decision's or job's evidence document and its pictures (blobs), under retention.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

Two new tables and nothing else changed, so a worker or gateway of the previous release keeps working while
the schema is ahead of it. Pictures are blobs in the database (pods have read-only file systems), one row
each, deleted with their evidence (ON DELETE CASCADE). Indexes: `expires_at` for the retention purge,
(tenant, created_at) for evicting a tenant's oldest evidence past its quota; the unique key of the pictures
starts with `evidence_id`, so it also serves the foreign key. Evidence ids are never reused (AUTOINCREMENT on
SQLite; a sequence on PostgreSQL): an overlay job names its item by id and must find it gone once erased or
re-captured, not write into another item that took the id.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "evidence",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(16), nullable=False),
        sa.Column("subject_id", sa.String(256), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("overlays", sa.String(16), nullable=False),
        sa.Column("nbytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant", "subject", "subject_id", name="uq_evidence_tenant_subject"),
        sqlite_autoincrement=True,  # ids never reused: overlay jobs name their item by id
    )
    op.create_index("ix_evidence_expires_at", "evidence", ["expires_at"])
    op.create_index("ix_evidence_tenant_created_at", "evidence", ["tenant", "created_at"])
    op.create_table(
        "evidence_pictures",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("evidence_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["evidence_id"], ["evidence.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "evidence_id", "kind", "position", name="uq_evidence_pictures_evidence_kind_position"
        ),
    )


def downgrade() -> None:
    op.drop_table("evidence_pictures")
    op.drop_index("ix_evidence_tenant_created_at", table_name="evidence")
    op.drop_index("ix_evidence_expires_at", table_name="evidence")
    op.drop_table("evidence")
