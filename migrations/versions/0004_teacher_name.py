"""Imported teachers: a teacher's display name (ONNX uploads name their network).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03

One nullable column: older teachers have no name (their `arch` names them).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("teachers") as batch:
        batch.add_column(sa.Column("name", sa.String(128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("teachers") as batch:
        batch.drop_column("name")
