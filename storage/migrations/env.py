"""Alembic environment: runs on the connection `storage.db.migrate` passes (config.attributes["connection"]), inside
its transaction, so a migration and the schema check happen under one lock."""

from __future__ import annotations

from alembic import context

from storage.db import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
