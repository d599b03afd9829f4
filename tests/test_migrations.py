"""Versioned schema migrations: a database made by the previous release (schema version 1, commit 91e619e) is
upgraded at start and the service runs on it; a half-applied upgrade finishes; a newer database is refused.

The version-1 database is built from the DDL the old code issued (peewee create_tables of the models at
91e619e, copied verbatim below), not from today's models.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from storage import migrations
from storage.db import close_database, open_database
from storage.migrations import LATEST, DatabaseTooNew
from tests.conftest import alert
from tests.symbols import NIFTY_CE, NIFTY_PE

V1_DDL = '''
CREATE TABLE "alerts" ("id" INTEGER NOT NULL PRIMARY KEY, "alert_id" VARCHAR(200), "received_at" VARCHAR(40) NOT NULL, "source" VARCHAR(20) NOT NULL, "remote_addr" VARCHAR(64), "outcome" VARCHAR(20) NOT NULL, "http_status" INTEGER NOT NULL, "strategy_name" VARCHAR(100), "body" TEXT, "response" TEXT, "error" TEXT);
CREATE INDEX "alert_alert_id" ON "alerts" ("alert_id");
CREATE TABLE "external_orders" ("id" INTEGER NOT NULL PRIMARY KEY, "broker_order_id" VARCHAR(40) NOT NULL, "remarks" VARCHAR(200), "exchange" VARCHAR(10), "symbol" VARCHAR(100), "side" VARCHAR(4), "quantity" INTEGER, "status" VARCHAR(30) NOT NULL, "filled_qty" INTEGER NOT NULL, "first_seen_at" VARCHAR(40) NOT NULL, "last_seen_at" VARCHAR(40) NOT NULL);
CREATE UNIQUE INDEX "externalorder_broker_order_id" ON "external_orders" ("broker_order_id");
CREATE TABLE "orders" ("id" INTEGER NOT NULL PRIMARY KEY, "command_id" VARCHAR(40) NOT NULL, "alert_id" VARCHAR(200) NOT NULL, "client_id" VARCHAR(40) NOT NULL, "source" VARCHAR(20) NOT NULL, "strategy_name" VARCHAR(100) NOT NULL, "execution_type" VARCHAR(10) NOT NULL, "exchange" VARCHAR(10) NOT NULL, "symbol" VARCHAR(100) NOT NULL, "side" VARCHAR(4) NOT NULL, "quantity" INTEGER NOT NULL, "product" VARCHAR(10) NOT NULL, "order_type" VARCHAR(10) NOT NULL, "price" REAL NOT NULL, "trigger_price" REAL, "status" VARCHAR(20) NOT NULL, "tag" VARCHAR(300), "broker_order_id" VARCHAR(40), "filled_qty" INTEGER NOT NULL, "avg_price" REAL, "created_at" VARCHAR(40) NOT NULL, "updated_at" VARCHAR(40) NOT NULL, "leg_index" INTEGER NOT NULL, "parent_command_id" VARCHAR(40));
CREATE UNIQUE INDEX "order_command_id" ON "orders" ("command_id");
CREATE INDEX "order_alert_id" ON "orders" ("alert_id");
CREATE INDEX "order_strategy_name" ON "orders" ("strategy_name");
CREATE INDEX "order_symbol" ON "orders" ("symbol");
CREATE INDEX "order_status" ON "orders" ("status");
CREATE INDEX "order_broker_order_id" ON "orders" ("broker_order_id");
CREATE INDEX "order_updated_at" ON "orders" ("updated_at");
CREATE TABLE "order_events" ("id" INTEGER NOT NULL PRIMARY KEY, "command_id" VARCHAR(40) NOT NULL, "from_status" VARCHAR(20), "to_status" VARCHAR(20) NOT NULL, "tag" VARCHAR(300), "detail" TEXT, "at" VARCHAR(40) NOT NULL);
CREATE INDEX "orderevent_command_id" ON "order_events" ("command_id");
CREATE TABLE "risk_state" ("client_id" VARCHAR(40) NOT NULL, "key" VARCHAR(60) NOT NULL, "value" TEXT NOT NULL, "updated_at" VARCHAR(40) NOT NULL);
CREATE UNIQUE INDEX "riskstate_client_id_key" ON "risk_state" ("client_id", "key");
'''

OLD_AT = "2026-11-20T04:00:00.000000+00:00"
ORDER_V1 = ("command_id", "alert_id", "client_id", "source", "strategy_name", "execution_type", "exchange", "symbol",
            "side", "quantity", "product", "order_type", "price", "trigger_price", "status", "tag",
            "broker_order_id", "filled_qty", "avg_price", "created_at", "updated_at", "leg_index",
            "parent_command_id")


def old_order(command_id: str, alert_id: str, status: str, filled: int = 0, **over) -> tuple:
    values = dict(command_id=command_id, alert_id=alert_id, client_id="paper", source="webhook",
                  strategy_name="OLD", execution_type="ENTRY", exchange="NFO", symbol=NIFTY_PE, side="BUY",
                  quantity=65, product="NRML", order_type="MARKET", price=0.0, trigger_price=None, status=status,
                  tag=None, broker_order_id=None, filled_qty=filled, avg_price=None, created_at=OLD_AT,
                  updated_at=OLD_AT, leg_index=0, parent_command_id=None)
    values.update(over)
    return tuple(values[c] for c in ORDER_V1)


def build_v1(path: Path) -> None:
    """orders.db as the previous release left it: its tables, some orders, an alert, an external order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path)
    con.executescript(V1_DDL)
    marks = ", ".join("?" * len(ORDER_V1))
    con.executemany(f'INSERT INTO "orders" ({", ".join(ORDER_V1)}) VALUES ({marks})', [
        old_order("oms-old-done", "tv-old-1", "FAILED", tag="BROKER_REJECTED:OLD", broker_order_id="26112000000001"),
        old_order("oms-old-leg2", "tv-old-1", "FAILED", tag="RISK_BLOCKED:OTHER_LEG_BLOCKED", leg_index=1),
        old_order("oms-old-fail", "tv-old-2", "FAILED", tag="GUARD_BLOCKED:NO_POSITION"),
    ])
    con.execute('INSERT INTO "alerts" (alert_id, received_at, source, outcome, http_status, strategy_name) '
                "VALUES ('tv-old-1', ?, 'webhook', 'accepted', 202, 'OLD')", (OLD_AT,))
    con.execute('INSERT INTO "external_orders" (broker_order_id, status, filled_qty, first_seen_at, last_seen_at) '
                "VALUES ('26112000000009', 'COMPLETE', 65, ?, ?)", (OLD_AT, OLD_AT))
    con.execute('INSERT INTO "risk_state" VALUES (\'paper\', \'mode\', \'"ACTIVE"\', ?)', (OLD_AT,))
    con.commit()
    con.close()


def shape(path: Path) -> dict:
    """Tables -> {column: (type, notnull, pk)}, plus index name -> (table, unique, columns)."""
    con = sqlite3.connect(path)
    tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    out = {"tables": {}, "indexes": {}}
    for t in tables:
        out["tables"][t] = {r[1]: (r[2], r[3], r[5]) for r in con.execute(f'PRAGMA table_info("{t}")')}
        for _, name, unique, *_ in con.execute(f'PRAGMA index_list("{t}")'):
            cols = tuple(r[2] for r in con.execute(f'PRAGMA index_info("{name}")'))
            out["indexes"][name] = (t, unique, cols)
    con.close()
    return out


def versions(path: Path) -> list[int]:
    con = sqlite3.connect(path)
    try:
        return [r[0] for r in con.execute('SELECT "version" FROM "schema_version" ORDER BY "version"')]
    finally:
        con.close()


def test_a_fresh_database_is_created_at_the_newest_version(tmp_path):
    db = open_database(tmp_path / "orders.db")
    close_database(db)
    assert versions(tmp_path / "orders.db") == [LATEST]
    assert LATEST >= 3


def test_version_1_database_is_upgraded_to_the_fresh_schema_with_alert_keys_backfilled(tmp_path):
    old = tmp_path / "old" / "orders.db"
    build_v1(old)
    before = shape(old)
    assert "schema_version" not in before["tables"] and "broker_status" not in before["tables"]["orders"]

    db = open_database(old)
    close_database(db)
    fresh = tmp_path / "fresh" / "orders.db"
    close_database(open_database(fresh))

    upgraded = shape(old)
    # Same tables, columns (type, NOT NULL, primary key) and indexes as a database created by this code.
    assert upgraded == shape(fresh)
    assert versions(old) == list(range(1, LATEST + 1))

    con = sqlite3.connect(old)
    rows = con.execute('SELECT command_id, alert_id, alert_key, broker_status, status, tag FROM "orders" '
                       "ORDER BY id").fetchall()
    assert rows == [("oms-old-done", "tv-old-1", "tv-old-1", None, "FAILED", "BROKER_REJECTED:OLD"),
                    ("oms-old-leg2", "tv-old-1", "tv-old-1", None, "FAILED", "RISK_BLOCKED:OTHER_LEG_BLOCKED"),
                    ("oms-old-fail", "tv-old-2", "tv-old-2", None, "FAILED", "GUARD_BLOCKED:NO_POSITION")]
    assert con.execute('SELECT alert_id, alert_key, fingerprint FROM "alerts"').fetchall() == [
        ("tv-old-1", None, None)]
    assert con.execute('SELECT COUNT(*) FROM "external_orders"').fetchone() == (1,)
    assert con.execute('SELECT COUNT(*) FROM "ledger_adjustments"').fetchone() == (0,)
    con.close()

    # Opening again changes nothing (no duplicated version rows, no error).
    close_database(open_database(old))
    assert versions(old) == list(range(1, LATEST + 1))
    assert shape(old) == upgraded


def test_a_half_applied_upgrade_finishes(tmp_path):
    """Columns that are already there (code that added them without a migration, or an interrupted start)
    are skipped; the backfill only fills what is empty."""
    path = tmp_path / "orders.db"
    build_v1(path)
    con = sqlite3.connect(path)
    con.execute("ALTER TABLE \"orders\" ADD COLUMN \"alert_key\" VARCHAR(40) NOT NULL DEFAULT ''")
    con.execute("UPDATE \"orders\" SET alert_key = 'kept-key' WHERE command_id = 'oms-old-fail'")
    con.execute('ALTER TABLE "alerts" ADD COLUMN "fingerprint" VARCHAR(64)')
    con.execute('CREATE TABLE "ledger_adjustments" ("id" INTEGER NOT NULL PRIMARY KEY, '
                '"strategy_name" VARCHAR(100) NOT NULL, "exchange" VARCHAR(10) NOT NULL, '
                '"symbol" VARCHAR(100) NOT NULL, "product" VARCHAR(10) NOT NULL, "quantity" INTEGER NOT NULL, '
                '"reason" VARCHAR(300) NOT NULL, "command_id" VARCHAR(40), "at" VARCHAR(40) NOT NULL)')
    con.commit()
    con.close()

    close_database(open_database(path))
    fresh = tmp_path / "fresh" / "orders.db"
    close_database(open_database(fresh))
    assert shape(path) == shape(fresh)
    assert versions(path) == list(range(1, LATEST + 1))
    con = sqlite3.connect(path)
    keys = dict(con.execute('SELECT command_id, alert_key FROM "orders"').fetchall())
    con.close()
    assert keys == {"oms-old-done": "tv-old-1", "oms-old-leg2": "tv-old-1", "oms-old-fail": "kept-key"}


def test_a_failing_migration_leaves_the_database_at_its_version(tmp_path, monkeypatch):
    """Each migration is one transaction: a step that fails undoes the migration's earlier steps."""
    path = tmp_path / "orders.db"
    build_v1(path)

    class Boom:
        def apply(self, db):
            raise RuntimeError("boom")

    broken = migrations.Migration(2, migrations.MIGRATIONS[0].description, (*migrations.MIGRATIONS[0].steps, Boom()))
    monkeypatch.setattr(migrations, "MIGRATIONS", (broken, *migrations.MIGRATIONS[1:]))
    with pytest.raises(RuntimeError, match="boom"):
        open_database(path)
    assert versions(path) == [1]
    assert "alert_key" not in shape(path)["tables"]["orders"]  # the ADD COLUMN before it was rolled back
    assert "ledger_adjustments" not in shape(path)["tables"]

    monkeypatch.undo()
    close_database(open_database(path))
    assert versions(path) == list(range(1, LATEST + 1))


def test_the_service_runs_on_an_upgraded_version_1_database(make_system, paper, tmp_path):
    data_dir = tmp_path / "data"
    build_v1(data_dir / "orders.db")
    system = make_system(data_dir=data_dir)
    assert versions(data_dir / "orders.db") == list(range(1, LATEST + 1))
    old = system.order("oms-old-done")
    assert (old["status"], old["alert_key"], old["broker_status"]) == ("FAILED", "tv-old-1", None)

    status, body = system.inject_alert(alert(strategy="NEW", alert_id="after-upgrade", tradingsymbol=NIFTY_CE,
                                             order_type="LIMIT", price=1.0))
    assert status == 202, body
    cid = body["orders"][0]["command_id"]
    order = system.wait_until(lambda: (o := system.order(cid)) and o["broker_status"] == "OPEN" and o, 10,
                              "the new order to rest OPEN at the broker")
    assert order["status"] == "SENT_TO_BROKER" and order["broker_order_id"]
    assert {o["command_id"] for o in system.orders()} == {cid, "oms-old-done", "oms-old-leg2", "oms-old-fail"}


def test_a_database_newer_than_the_code_refuses_to_start(tmp_path):
    data_dir = tmp_path / "data"
    close_database(open_database(data_dir / "orders.db"))
    con = sqlite3.connect(data_dir / "orders.db")
    con.execute("INSERT INTO schema_version VALUES (?, '2099-01-01T00:00:00+00:00', 'from the future')",
                (LATEST + 1,))
    con.commit()
    con.close()
    with pytest.raises(DatabaseTooNew, match=f"version {LATEST + 1} is newer"):
        open_database(data_dir / "orders.db")

    config = tmp_path / "c.toml"
    config.write_text(f'[service]\ndata_dir = "{data_dir}"\nport = 0\n[paper]\nport = 0\n', encoding="utf-8")
    venv_bin = Path(sys.executable).parent
    env = {"PATH": str(venv_bin) + ":/usr/bin:/bin", "HOME": str(tmp_path)}
    for command in (["run"], ["orders"], ["verify"]):
        result = subprocess.run([sys.executable, "-m", "runtime.cli", *command, "--config", str(config)],
                                cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and f"version {LATEST + 1} is newer" in lines[0], (command, result.stderr)
    assert versions(data_dir / "orders.db") == [LATEST, LATEST + 1]  # untouched
