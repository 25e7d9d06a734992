"""Size budgets: a teacher's FLOPs and the smallest student its space can build (the limits a
budget is checked against), a job's size target and accuracy floor, a trial's tag (the
budget's seeds), and a trial's finishing evaluation (its longer second score before full
training).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07

Columns only (nullable: teachers checked before this revision have no sizes, and their jobs'
budgets are checked when the job starts; older jobs have no target and no floor, older trials
no tag).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("teachers") as batch:
        batch.add_column(sa.Column("sizes", sa.JSON, nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("target", sa.JSON, nullable=True))
        batch.add_column(sa.Column("accuracy_floor", sa.Float, nullable=True))
    with op.batch_alter_table("trials") as batch:
        batch.add_column(sa.Column("tag", sa.String(32), nullable=True))
        batch.add_column(sa.Column("finish", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("trials") as batch:
        batch.drop_column("finish")
        batch.drop_column("tag")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("accuracy_floor")
        batch.drop_column("target")
    with op.batch_alter_table("teachers") as batch:
        batch.drop_column("sizes")
