"""Durable state: the SQLite index and job rows (SQLAlchemy) and the file store."""
