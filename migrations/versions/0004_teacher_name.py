"""Imported teachers and self-contained students: a teacher's display name (ONNX uploads name
their network) and a fully trained student's model card.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03

Nullable columns: older teachers have no name (their `arch` names them), older students no card.
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
    with op.batch_alter_table("trials") as batch:
        batch.add_column(sa.Column("card", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("trials") as batch:
        batch.drop_column("card")
    with op.batch_alter_table("teachers") as batch:
        batch.drop_column("name")
