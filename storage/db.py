"""Database set-up: SQLite in WAL mode at <data_dir>/orders.db, one connection per thread."""

from __future__ import annotations

from pathlib import Path

from peewee import SqliteDatabase

from storage.models import ALL_MODELS, database_proxy


def open_database(path: str | Path, *, synchronous: str = "FULL") -> SqliteDatabase:
    """Open (creating if needed) the SQLite database and bind the models to it.

    WAL lets the read API and the watcher read while StoreActor writes. synchronous=FULL makes a commit
    durable before we answer 202 or send to the broker.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = SqliteDatabase(
        str(path),
        pragmas={
            "journal_mode": "wal",
            "synchronous": synchronous,
            "busy_timeout": 5000,
            "foreign_keys": 1,
        },
        check_same_thread=False,
        # Writers take the write lock when the transaction begins: a transaction that read first and then
        # found another connection had committed would otherwise fail at once (SQLITE_BUSY_SNAPSHOT).
        lock_type="IMMEDIATE",
    )
    database_proxy.initialize(db)
    db.connect(reuse_if_open=True)
    db.create_tables(ALL_MODELS, safe=True)
    return db


def close_database(db) -> None:
    if db is not None and not db.is_closed():
        db.close()
