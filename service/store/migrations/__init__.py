"""Alembic migrations of the decision store (`env.py`, `versions/`); run through `service.store.migrate`."""
