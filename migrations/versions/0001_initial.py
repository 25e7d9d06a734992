"""Initial schema: artifacts, teachers, jobs, trials.

Revision ID: 0001
Revises:
Create Date: 2026-11-27

The tables are written out here (frozen), not derived from the live ORM models.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "artifacts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("path", sa.String(255), nullable=False, unique=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "teachers",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("arch", sa.String(64), nullable=False),
        sa.Column("num_classes", sa.Integer, nullable=False),
        sa.Column("dataset", sa.String(1024), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("accuracy", sa.Float, nullable=True),
        sa.Column("params", sa.BigInteger, nullable=False),
        sa.Column("input_shape", sa.JSON, nullable=False),
        sa.Column("train_settings", sa.JSON, nullable=True),
        sa.Column("weights_id", sa.Integer, sa.ForeignKey("artifacts.id"), nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("teacher_id", sa.Integer, sa.ForeignKey("teachers.id"), nullable=False),
        sa.Column("dataset", sa.String(1024), nullable=False),
        sa.Column("strategy", sa.String(16), nullable=False),
        sa.Column("steps", sa.Integer, nullable=False),
        sa.Column("per_step", sa.Integer, nullable=False),
        sa.Column("search", sa.JSON, nullable=False),
        sa.Column("top_k", sa.Integer, nullable=False),
        sa.Column("full_training", sa.JSON, nullable=False),
        sa.Column("reward", sa.String(16), nullable=False),
        sa.Column("seed", sa.BigInteger, nullable=False),
        sa.Column("embedding_from", sa.Integer, sa.ForeignKey("jobs.id"), nullable=True),
        sa.Column("searcher", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("encoder_id", sa.Integer, sa.ForeignKey("artifacts.id"), nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=True),
        sa.Column("finished_at", sa.DateTime, nullable=True),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "trials",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("action", sa.JSON, nullable=False),
        sa.Column("params", sa.BigInteger, nullable=True),
        sa.Column("flops", sa.BigInteger, nullable=True),
        sa.Column("accuracy", sa.Float, nullable=True),
        sa.Column("compression", sa.Float, nullable=True),
        sa.Column("reward", sa.Float, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("history", sa.JSON, nullable=False),
        sa.Column("seconds", sa.JSON, nullable=False),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("weights_id", sa.Integer, sa.ForeignKey("artifacts.id"), nullable=True),
        sa.Column("final_accuracy", sa.Float, nullable=True),
        sa.Column("final_history", sa.JSON, nullable=True),
        sa.Column("final_seconds", sa.Float, nullable=True),
        sa.Column("final_weights_id", sa.Integer, sa.ForeignKey("artifacts.id"), nullable=True),
        sa.Column("onnx_id", sa.Integer, sa.ForeignKey("artifacts.id"), nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=True),
        sa.Column("finished_at", sa.DateTime, nullable=True),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_trials_job_updated", "trials", ["job_id", "updated_at", "id"])
    op.create_index("ix_trials_job_number", "trials", ["job_id", "number"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_trials_job_number", table_name="trials")
    op.drop_index("ix_trials_job_updated", table_name="trials")
    op.drop_table("trials")
    op.drop_table("jobs")
    op.drop_table("teachers")
    op.drop_table("artifacts")
