"""Persistent state (SQLite by default, PostgreSQL via `database_url`)."""

from p2sgw.store.db import LeaseChange, Store
from p2sgw.store.models import ClientRecord, LeaseRecord

__all__ = ["ClientRecord", "LeaseChange", "LeaseRecord", "Store"]
