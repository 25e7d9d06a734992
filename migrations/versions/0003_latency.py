"""Latency-aware compression: a job's latency target; a trial's measured latency, its teacher's
on the same worker, and the spread of the timed runs.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03

Columns only (nullable: older jobs measured no latency).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("latency", sa.JSON, nullable=True))
    with op.batch_alter_table("trials") as batch:
        batch.add_column(sa.Column("latency_ms", sa.Float, nullable=True))
        batch.add_column(sa.Column("teacher_latency_ms", sa.Float, nullable=True))
        batch.add_column(sa.Column("latency_spread", sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("trials") as batch:
        batch.drop_column("latency_spread")
        batch.drop_column("teacher_latency_ms")
        batch.drop_column("latency_ms")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("latency")
