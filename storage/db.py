"""Database set-up: SQLite in WAL mode at <data_dir>/orders.db, one connection per thread."""

from __future__ import annotations

from pathlib import Path

from peewee import SqliteDatabase

from storage import migrations
from storage.models import database_proxy


def open_database(path: str | Path, *, synchronous: str = "FULL") -> SqliteDatabase:
    """Open (creating if needed) the SQLite database, bring its schema to the newest version, bind the models.

    Raises storage.migrations.SchemaError (DatabaseTooNew for a database of a newer release) with a one-line
    message when this code cannot use the database.

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
    try:
        migrations.upgrade(db, where=str(path))
    except Exception:
        db.close()
        raise
    return db


def close_database(db) -> None:
    if db is not None and not db.is_closed():
        db.close()
