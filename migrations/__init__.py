"""Alembic environment and versions of the coordinator's schema (`esnac db upgrade`)."""
