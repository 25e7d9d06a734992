"""Trials: the step and kernel that proposed them, live progress, the last heartbeat and the
attempts the coordinator lost; teachers: training progress.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03

Columns only (nullable: trials of older jobs have none of these).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("trials") as batch:
        batch.add_column(sa.Column("step", sa.Integer, nullable=True))
        batch.add_column(sa.Column("kernel", sa.Integer, nullable=True))
        batch.add_column(sa.Column("progress", sa.JSON, nullable=True))
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime, nullable=True))
        batch.add_column(sa.Column("lost_attempts", sa.JSON, nullable=True))
    with op.batch_alter_table("teachers") as batch:
        batch.add_column(sa.Column("progress", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("teachers") as batch:
        batch.drop_column("progress")
    with op.batch_alter_table("trials") as batch:
        batch.drop_column("lost_attempts")
        batch.drop_column("heartbeat_at")
        batch.drop_column("progress")
        batch.drop_column("kernel")
        batch.drop_column("step")
