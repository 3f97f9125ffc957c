"""Alembic environment: migrations run on the connection `service.store.migrate` hands over.

There is no `alembic.ini` and no URL here: the caller has already opened the connection, begun its transaction
and taken the migration lock, so alembic runs inside that transaction (it neither begins nor commits one).
"""

from __future__ import annotations

from alembic import context

from service.store.tables import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `dfguard db upgrade` or service.store.migrate, not alembic")
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,  # SQLite cannot ALTER most things: alembic rebuilds the table instead
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
