"""Tables: issued client certificates and sticky address leases.

Portable column types only, so the same models run on SQLite (default) and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import DateTime, String, TypeDecorator, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator):
    """Stores naive UTC and hands back aware UTC, because SQLite keeps no time zone."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use UTC-aware datetimes")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect) -> dt.datetime | None:
        return None if value is None else value.replace(tzinfo=dt.UTC)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    pass


class ClientRecord(Base):
    """One issued client certificate; the name is the certificate CN and the session identity."""

    __tablename__ = "clients"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    serial: Mapped[str] = mapped_column(String(64))
    thumbprint: Mapped[str] = mapped_column(String(40), index=True)
    not_after: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    issued_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True, default=None)


class LeaseRecord(Base):
    """The address an identity last had in a pool, kept so reconnects and restarts get it back."""

    __tablename__ = "leases"
    __table_args__ = (UniqueConstraint("pool", "identity", name="uq_leases_pool_identity"),)

    pool: Mapped[str] = mapped_column(String(64), primary_key=True)
    address: Mapped[str] = mapped_column(String(45), primary_key=True)
    identity: Mapped[str] = mapped_column(String(255))
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
