"""Alembic migrations of the app's schema (the sandbox shop's tables included)."""
