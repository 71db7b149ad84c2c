"""Alembic migrations of the coordinator's database (a package so that wheels ship it; see env.py)."""
