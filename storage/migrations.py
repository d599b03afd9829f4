"""Versioned schema migrations: an existing orders.db is brought to the newest schema at start.

The `schema_version` table holds one row per applied version (the current version is the highest). Version 1
is the schema the last release without this table shipped (commit 91e619e): a database that has the tables but
no `schema_version` is version 1. A fresh database is created straight at the newest version from the models.

Each migration runs in one transaction together with its `schema_version` row, and every step checks first
whether its work is already there (a column, a table, an index), so a start that was interrupted, or a database
made by code that added columns without a migration, is upgraded without errors. Migrations describe the schema
as it was at their version in literal SQL: they must not follow later edits of storage/models.py.

A database newer than this code is refused (DatabaseTooNew): old code could write rows the newer schema's
readers misread, and never knows how to undo the newer migrations.
"""

from __future__ import annotations

from dataclasses import dataclass

from loguru import logger

from storage.models import ALL_MODELS, utc_now

VERSION_TABLE = "schema_version"


class SchemaError(Exception):
    """The database cannot be used by this code (message is one readable line)."""


class DatabaseTooNew(SchemaError):
    """The database was upgraded by a newer release than this code."""


@dataclass(frozen=True)
class AddColumn:
    table: str
    column: str
    definition: str  # e.g. 'VARCHAR(30)'; NOT NULL needs a DEFAULT (SQLite's rule for ADD COLUMN)

    def apply(self, db) -> None:
        if self.column not in {c.name for c in db.get_columns(self.table)}:
            db.execute_sql(f'ALTER TABLE "{self.table}" ADD COLUMN "{self.column}" {self.definition}')


@dataclass(frozen=True)
class CreateTable:
    table: str
    sql: str  # CREATE TABLE IF NOT EXISTS ...

    def apply(self, db) -> None:
        db.execute_sql(self.sql)


@dataclass(frozen=True)
class CreateIndex:
    name: str
    table: str
    columns: tuple[str, ...]
    unique: bool = False

    def apply(self, db) -> None:
        cols = ", ".join(f'"{c}"' for c in self.columns)
        unique = "UNIQUE " if self.unique else ""
        db.execute_sql(f'CREATE {unique}INDEX IF NOT EXISTS "{self.name}" ON "{self.table}" ({cols})')


@dataclass(frozen=True)
class Backfill:
    """A data step; its SQL must be idempotent by its WHERE clause."""

    sql: str

    def apply(self, db) -> None:
        db.execute_sql(self.sql)


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    steps: tuple


MIGRATIONS: tuple[Migration, ...] = (
    Migration(2, "orders.alert_key (backfilled from alert_id), alerts.alert_key, alerts.fingerprint, "
                 "ledger_adjustments", (
        AddColumn("orders", "alert_key", "VARCHAR(40) NOT NULL DEFAULT ''"),
        # Legs registered before alert keys existed belong to the alert their alert_id names.
        Backfill("UPDATE \"orders\" SET \"alert_key\" = \"alert_id\" WHERE \"alert_key\" = '' OR \"alert_key\" IS NULL"),
        CreateIndex("order_alert_key", "orders", ("alert_key",)),
        AddColumn("alerts", "alert_key", "VARCHAR(40)"),
        AddColumn("alerts", "fingerprint", "VARCHAR(64)"),
        CreateTable("ledger_adjustments",
                    'CREATE TABLE IF NOT EXISTS "ledger_adjustments" ("id" INTEGER NOT NULL PRIMARY KEY, '
                    '"strategy_name" VARCHAR(100) NOT NULL, "exchange" VARCHAR(10) NOT NULL, '
                    '"symbol" VARCHAR(100) NOT NULL, "product" VARCHAR(10) NOT NULL, "quantity" INTEGER NOT NULL, '
                    '"reason" VARCHAR(300) NOT NULL, "command_id" VARCHAR(40), "at" VARCHAR(40) NOT NULL)'),
        CreateIndex("ledgeradjustment_strategy_name", "ledger_adjustments", ("strategy_name",)),
    )),
    Migration(3, "orders.broker_status, orders.broker_status_at", (
        AddColumn("orders", "broker_status", "VARCHAR(30)"),
        AddColumn("orders", "broker_status_at", "VARCHAR(40)"),
    )),
    Migration(4, "seen_signatures (webhook replay memory)", (
        CreateTable("seen_signatures",
                    'CREATE TABLE IF NOT EXISTS "seen_signatures" ("id" INTEGER NOT NULL PRIMARY KEY, '
                    '"key" VARCHAR(64) NOT NULL, "at" VARCHAR(40) NOT NULL)'),
        CreateIndex("seensignature_key", "seen_signatures", ("key",), unique=True),
        CreateIndex("seensignature_at", "seen_signatures", ("at",)),
    )),
)
LATEST = MIGRATIONS[-1].version if MIGRATIONS else 1


def _has_version_table(db) -> bool:
    return db.table_exists(VERSION_TABLE)


def current_version(db) -> int:
    """0 for an empty database, 1 for one made before versioning, else the highest applied version."""
    if _has_version_table(db):
        row = db.execute_sql(f'SELECT MAX("version") FROM "{VERSION_TABLE}"').fetchone()
        if row and row[0] is not None:
            return int(row[0])
    return 1 if db.table_exists("orders") else 0


def _record(db, version: int, description: str) -> None:
    db.execute_sql(f'CREATE TABLE IF NOT EXISTS "{VERSION_TABLE}" ("version" INTEGER NOT NULL PRIMARY KEY, '
                   f'"applied_at" VARCHAR(40) NOT NULL, "description" TEXT)')
    p = db.param
    db.execute_sql(f'INSERT INTO "{VERSION_TABLE}" ("version", "applied_at", "description") VALUES ({p}, {p}, {p})',
                   (version, utc_now(), description))


def _refuse_if_newer(version: int, where: str) -> None:
    if version > LATEST:
        raise DatabaseTooNew(f"{where}: database schema version {version} is newer than this oms "
                             f"(knows up to {LATEST}); run the newer oms or restore a backup of this version")


def upgrade(db, where: str = "orders.db") -> int:
    """Bring the database to LATEST (or create it there). Returns the version found before.

    Each step runs under the write lock (the database opens transactions IMMEDIATE), re-reading the version
    inside: two processes starting together apply each migration once.
    """
    with db.atomic():
        found = current_version(db)
        _refuse_if_newer(found, where)
        if found == 0:
            db.create_tables(ALL_MODELS, safe=True)
            _record(db, LATEST, "created at this version")
            return 0
        if not _has_version_table(db):
            _record(db, 1, "baseline: the schema before versioned migrations")
    for migration in MIGRATIONS:
        if migration.version <= found:
            continue
        with db.atomic():
            now = current_version(db)
            _refuse_if_newer(now, where)
            if now >= migration.version:
                continue  # another process got here first
            for step in migration.steps:
                step.apply(db)
            _record(db, migration.version, migration.description)
        logger.info("database {} migrated to schema version {}: {}", where, migration.version,
                    migration.description)
    # A table that an even older release never had (create_tables(safe=True) did this before versioning).
    db.create_tables(ALL_MODELS, safe=True)
    check(db, where)
    return found


def check(db, where: str = "orders.db") -> None:
    """Every column the models expect must exist: a gap is a missing migration, refused at start rather than
    failing on the first order."""
    for model in ALL_MODELS:
        table = model._meta.table_name
        have = {c.name for c in db.get_columns(table)}
        missing = [f.column_name for f in model._meta.sorted_fields if f.column_name not in have]
        if missing:
            raise SchemaError(f"{where}: table {table} lacks column(s) {', '.join(missing)} at schema version "
                              f"{current_version(db)}: a migration is missing")
