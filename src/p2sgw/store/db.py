"""Queries over the store; every method is one short transaction, so the CLI and a running gateway can share it."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import create_engine, delete, event, insert, or_, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

from p2sgw.store.models import Base, ClientRecord, LeaseRecord, utcnow

if TYPE_CHECKING:
    from p2sgw.config import GatewayConfig

DB_NAME = "p2sgw.db"
SQLITE_BUSY_TIMEOUT_MS = 5000


@dataclass(frozen=True, slots=True)
class LeaseChange:
    """One identity -> address mapping change of a pool; identity None deletes the address's mapping."""

    pool: str
    address: str
    identity: str | None
    at: dt.datetime


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        is_sqlite = url.startswith("sqlite")
        self.engine: Engine = create_engine(
            url,
            pool_pre_ping=not is_sqlite,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000} if is_sqlite else {},
        )
        if is_sqlite:
            event.listen(self.engine, "connect", _tune_sqlite)
        Base.metadata.create_all(self.engine)
        # Records are handed out after commit; keep their loaded values instead of re-querying.
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def for_state_dir(cls, state_dir: Path, config: GatewayConfig) -> Store:
        return cls(config.database_url or f"sqlite:///{Path(state_dir).absolute() / DB_NAME}")

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def clear(self) -> None:
        """Forget all clients and leases (a re-initialised gateway has a new CA)."""
        with self._session.begin() as session:
            session.execute(delete(LeaseRecord))
            session.execute(delete(ClientRecord))

    # Clients

    def add_client(
        self,
        name: str,
        serial: str,
        thumbprint: str,
        not_after: dt.datetime,
        issued_at: dt.datetime | None = None,
    ) -> ClientRecord:
        """Record an issued certificate, replacing the record of a previous (revoked) one of that name."""
        record = ClientRecord(
            name=name,
            serial=serial,
            thumbprint=thumbprint.upper(),
            not_after=not_after,
            issued_at=issued_at or utcnow(),
            revoked_at=None,
        )
        with self._session.begin() as session:
            return session.merge(record)

    def list_clients(self) -> list[ClientRecord]:
        with self._session() as session:
            return list(session.scalars(select(ClientRecord).order_by(ClientRecord.name)))

    def get_client(self, name: str) -> ClientRecord | None:
        with self._session() as session:
            return session.get(ClientRecord, name)

    def mark_revoked(self, name: str) -> ClientRecord:
        """Set revoked_at (once; revoking again keeps the first time). KeyError if there is no such client."""
        with self._session.begin() as session:
            record = session.get(ClientRecord, name)
            if record is None:
                raise KeyError(name)
            if record.revoked_at is None:
                record.revoked_at = utcnow()
            return record

    # Leases

    def load_leases(self, pool: str) -> list[LeaseRecord]:
        """All identity -> address mappings of a pool, least recently used first."""
        with self._session() as session:
            query = select(LeaseRecord).where(LeaseRecord.pool == pool).order_by(LeaseRecord.updated_at)
            return list(session.scalars(query))

    def apply_lease_changes(self, changes: list[LeaseChange]) -> None:
        """Apply queued mapping changes in order, in one transaction (AddressPool writes behind)."""
        with self._session.begin() as session:
            for change in changes:
                if change.identity is None:
                    session.execute(delete(LeaseRecord).where(LeaseRecord.pool == change.pool,
                                                              LeaseRecord.address == change.address))
                    continue
                # map identity to address, dropping whatever either of them was mapped to before
                session.execute(
                    delete(LeaseRecord).where(
                        LeaseRecord.pool == change.pool,
                        or_(LeaseRecord.address == change.address, LeaseRecord.identity == change.identity),
                    )
                )
                session.execute(insert(LeaseRecord).values(pool=change.pool, address=change.address,
                                                           identity=change.identity, updated_at=change.at))

    def save_lease(self, pool: str, identity: str, address: str) -> None:
        self.apply_lease_changes([LeaseChange(pool, address, identity, utcnow())])

    def delete_lease(self, pool: str, address: str) -> None:
        self.apply_lease_changes([LeaseChange(pool, address, None, utcnow())])


def _tune_sqlite(dbapi_connection, _record) -> None:
    """WAL lets readers and one writer work concurrently; busy_timeout makes a second writer wait, not fail."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
