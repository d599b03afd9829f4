"""orders.broker_status: the broker's own word on each order, recorded from WebSocket pushes and OrderBook reads,
shown in GET /orders (storage.queries.list_orders) and `oms orders`, and what `oms verify` / /diagnostics call
stuck: a non-terminal order without broker confirmation for longer than service.stuck_after_s."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from actors.store import OrderStore
from messages.commands import BrokerOrderReport, RegisterAlert, TransitionOrder
from messages.orders import NewOrder
from messages.watcher import GetWatcherStatus
from runtime.cli import format_orders
from storage import queries
from storage.db import close_database, open_database
from storage.models import OrderEvent
from tests.conftest import alert, paper_faults, paper_orders
from tests.symbols import NIFTY_CE, NIFTY_PE

NO_TICKS = 60.0  # a poll interval longer than the test: the service never reads the book on its own
FAR_BELOW = 1.0  # a BUY LIMIT at 1.0 rests OPEN on the paper exchange (option prices ~50..500)


# ---- OrderStore, directly --------------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path):
    db = open_database(tmp_path / "orders.db")
    try:
        yield OrderStore(db)
    finally:
        close_database(db)


def sent(store: OrderStore, cid: str, status: str = "SENT_TO_BROKER") -> None:
    leg = NewOrder(command_id=cid, alert_id=f"a-{cid}", client_id="C1", source="webhook", strategy_name="S1",
                   execution_type="ENTRY", exchange="NFO", symbol=NIFTY_CE, side="BUY", quantity=65,
                   product="NRML", order_type="LIMIT", price=1.0)
    store.register_alert(RegisterAlert(alert_id=f"a-{cid}", source="webhook", strategy_name="S1", legs=(leg,)))
    if status != "CREATED":
        result, _ = store.transition(TransitionOrder(command_id=cid, to_status="SENT_TO_BROKER"))
        assert result.applied


def report(cid: str, status: str, filled: int = 0, avg: float | None = None, origin: str = "ws"):
    return BrokerOrderReport(remarks=cid, broker_order_id="B" + cid, status=status, filled_qty=filled,
                             avg_price=avg, origin=origin)


def events(cid: str) -> list[str]:
    return [e.to_status for e in OrderEvent.select().where(OrderEvent.command_id == cid).order_by(OrderEvent.id)]


def test_pending_then_open_is_recorded_without_a_transition(store):
    sent(store, "c1")
    result, changes = store.apply_broker_report(report("c1", "PENDING"))
    row = store.get_order("c1")
    assert result.changed and (row["status"], row["broker_status"]) == ("SENT_TO_BROKER", "PENDING")
    assert row["broker_status_at"] and row["broker_order_id"] == "Bc1"
    assert [c.order.broker_status for c in changes] == ["PENDING"]

    result, changes = store.apply_broker_report(report("c1", "Open", origin="poll"))  # spelled as some brokers do
    # Only the broker's status is new: held back and written with the next batch (no commit per push).
    assert not result.changed and changes == [] and store.get_order("c1")["broker_status"] == "PENDING"
    assert store.flush_broker_statuses() == 1
    row = store.get_order("c1")
    assert (row["status"], row["broker_status"]) == ("SENT_TO_BROKER", "OPEN")
    assert events("c1") == ["CREATED", "SENT_TO_BROKER"]  # no status moved: no event

    result, _ = store.apply_broker_report(report("c1", "COMPLETE", filled=65, avg=2.5))
    row = store.get_order("c1")
    assert (row["status"], row["broker_status"], row["filled_qty"]) == ("EXECUTED", "COMPLETE", 65)


def test_the_broker_status_never_goes_back(store):
    """A book row read before the COMPLETE push but applied after it must not put the order back to OPEN."""
    sent(store, "c1")
    store.apply_broker_report(report("c1", "OPEN"))
    store.apply_broker_report(report("c1", "COMPLETE", filled=65, avg=2.5))
    for stale in ("OPEN", "PENDING", "TRIGGER_PENDING", "CANCELED"):
        result, changes = store.apply_broker_report(report("c1", stale, filled=65, avg=2.5, origin="poll"))
        assert not result.changed and changes == []
    assert store.get_order("c1")["broker_status"] == "COMPLETE"

    sent(store, "c2")
    store.apply_broker_report(report("c2", "OPEN"))
    store.apply_broker_report(report("c2", "PENDING", origin="poll"))
    store.flush_broker_statuses()
    assert store.get_order("c2")["broker_status"] == "OPEN"
    store.apply_broker_report(report("c2", "TRIGGER_PENDING"))  # working statuses: the latest report wins
    store.flush_broker_statuses()
    assert store.get_order("c2")["broker_status"] == "TRIGGER_PENDING"
    store.apply_broker_report(report("c2", "CANCELLED"))
    row = store.get_order("c2")
    assert (row["status"], row["broker_status"], row["tag"]) == ("FAILED", "CANCELED", "BROKER_CANCELED")


def test_a_report_that_changes_nothing_takes_no_write_lock(store, tmp_path):
    sent(store, "c1")
    store.apply_broker_report(report("c1", "OPEN"))
    before = store.get_order("c1")
    other = sqlite3.connect(tmp_path / "orders.db", timeout=0.1)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the lock: a write would wait, then fail
    try:
        result, changes = store.apply_broker_report(report("c1", "OPEN", origin="poll"))
        assert result.matched and not result.changed and changes == []
    finally:
        other.rollback()
        other.close()
    assert store.get_order("c1") == before


def iso_ago(seconds: float) -> datetime:
    return datetime.now(timezone.utc) + timedelta(seconds=seconds)


def test_stuck_means_no_broker_confirmation(store):
    sent(store, "created", status="CREATED")
    sent(store, "unconfirmed")  # SENT_TO_BROKER, nothing heard
    sent(store, "pending")
    store.apply_broker_report(report("pending", "PENDING"))
    sent(store, "open")
    store.apply_broker_report(report("open", "OPEN"))
    sent(store, "trigger")
    store.apply_broker_report(report("trigger", "TRIGGER_PENDING"))
    sent(store, "partial")
    store.apply_broker_report(report("partial", "OPEN", filled=10, avg=2.0))
    sent(store, "done")
    store.apply_broker_report(report("done", "COMPLETE", filled=65, avg=2.0))

    later = iso_ago(60)
    stuck = {o["command_id"] for o in queries.stuck_orders(30, now=later)}
    assert stuck == {"created", "unconfirmed", "pending"}
    assert queries.stuck_orders(30) == []  # all of them are younger than 30 s now


# ---- the real pipeline against the paper exchange --------------------------------------------------------

def older_than(order: dict, seconds: float) -> bool:
    return datetime.now(timezone.utc) - datetime.fromisoformat(order["updated_at"]) > timedelta(seconds=seconds)


def test_websocket_pushes_record_open_trigger_pending_and_complete(make_system, paper):
    # The book is read once at start (before any order) and never again: what arrives came by WebSocket.
    system = make_system(broker={"poll_interval_s": NO_TICKS})
    status, body = system.inject_alert(alert(strategy="REST", alert_id="ws-rest", tradingsymbol=NIFTY_CE,
                                             order_type="LIMIT", price=FAR_BELOW))
    assert status == 202, body
    resting = body["orders"][0]["command_id"]
    status, body = system.inject_alert(alert(strategy="FILL", alert_id="ws-fill", tradingsymbol=NIFTY_PE,
                                             order_type="LIMIT", price=5000.0))
    assert status == 202, body
    filled = body["orders"][0]["command_id"]

    rest = system.wait_until(lambda: (o := system.order(resting)) and o["broker_status"] == "OPEN" and o, 10,
                             "the resting LIMIT to be reported OPEN")
    assert rest["status"] == "SENT_TO_BROKER" and rest["broker_status_at"]
    done = system.wait_for_status(filled, "EXECUTED")
    assert done["broker_status"] == "COMPLETE"
    assert system.registry.ask("watcher", GetWatcherStatus(), timeout=5)["ws"] == "connected"

    listed = {o["command_id"]: o for o in queries.list_orders()}  # what GET /orders serves
    assert listed[resting]["broker_status"] == "OPEN" and listed[filled]["broker_status"] == "COMPLETE"


def test_orderbook_reads_record_open(make_system, paper):
    system = make_system(broker={"use_websocket": False, "poll_interval_s": 0.3})
    status, body = system.inject_alert(alert(strategy="POLL", alert_id="poll-rest", tradingsymbol=NIFTY_CE,
                                             order_type="LIMIT", price=FAR_BELOW))
    assert status == 202, body
    cid = body["orders"][0]["command_id"]
    order = system.wait_until(lambda: (o := system.order(cid)) and o["broker_status"] == "OPEN" and o, 10,
                              "an OrderBook read to report the resting LIMIT OPEN")
    assert order["status"] == "SENT_TO_BROKER"


def oms_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    venv_bin = Path(sys.executable).parent
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=30, env={"PATH": str(venv_bin) + ":/usr/bin:/bin", "HOME": str(cwd)})


def test_verify_passes_a_confirmed_resting_order_and_names_an_unconfirmed_one(make_system, paper, tmp_path):
    stuck_after = 0.2
    confirmed_dir, hung_dir = tmp_path / "confirmed", tmp_path / "hung"
    system = make_system(data_dir=confirmed_dir, service={"stuck_after_s": stuck_after})
    status, body = system.inject_alert(alert(strategy="REST", alert_id="v-rest", tradingsymbol=NIFTY_CE,
                                             order_type="LIMIT", price=FAR_BELOW))
    resting = body["orders"][0]["command_id"]
    system.wait_until(lambda: (o := system.order(resting)) and o["broker_status"] == "OPEN"
                      and older_than(o, stuck_after), 10, "the resting order OPEN and older than stuck_after_s")
    config = tmp_path / "confirmed.toml"
    config.write_text(f'[service]\ndata_dir = "{confirmed_dir}"\nstuck_after_s = {stuck_after}\n', encoding="utf-8")
    result = oms_cli("verify", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SENT_TO_BROKER=1" in result.stdout and resting not in result.stdout
    assert queries.stuck_orders(stuck_after) == []
    table = oms_cli("orders", "--config", str(config), cwd=tmp_path)
    line = [x for x in table.stdout.splitlines() if resting in x]
    assert table.returncode == 0 and line and "OPEN" in line[0] and "SENT" in line[0], table.stdout
    system.stop()

    # The exchange takes the order but holds the PlaceOrder reply; no WebSocket and no polling while it is
    # held: nothing has confirmed the order.
    paper_faults(paper, hang_place_orders=1)
    hung = make_system(data_dir=hung_dir, service={"stuck_after_s": stuck_after},
                       broker={"use_websocket": False, "poll_interval_s": NO_TICKS, "request_timeout_s": 10.0})
    status, body = hung.inject_alert(alert(strategy="HUNG", alert_id="v-hung", tradingsymbol=NIFTY_CE,
                                           order_type="LIMIT", price=FAR_BELOW))
    cid = body["orders"][0]["command_id"]
    hung.wait_until(lambda: [o for o in paper_orders(paper) if o["remarks"] == cid], 5, "the exchange to have it")
    hung.wait_until(lambda: (o := hung.order(cid)) and o["status"] == "SENT_TO_BROKER"
                    and older_than(o, stuck_after), 5, "the sent order to be older than stuck_after_s")
    assert hung.order(cid)["broker_status"] is None
    config = tmp_path / "hung.toml"
    config.write_text(f'[service]\ndata_dir = "{hung_dir}"\nstuck_after_s = {stuck_after}\n', encoding="utf-8")
    result = oms_cli("verify", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert cid in result.stdout and "broker_status=-" in result.stdout
    assert [o["command_id"] for o in queries.stuck_orders(stuck_after)] == [cid]  # /diagnostics' list


# ---- `oms orders` ------------------------------------------------------------------------------------------

def test_orders_status_filter_rejects_unknown_values_listing_the_valid_ones(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(f'[service]\ndata_dir = "{tmp_path / "none"}"\n', encoding="utf-8")
    result = oms_cli("orders", "--status", "OPEN", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "'OPEN'" in lines[0], result.stderr
    for status in ("CREATED", "SENT_TO_BROKER", "PARTIAL", "EXECUTED", "FAILED"):
        assert status in lines[0]
    assert not (tmp_path / "none").exists()  # nothing was created


def test_orders_table_fits_120_columns():
    long_tag = "GUARD_BLOCKED:STRATEGY_HAS_POSITION and a long broker reason " * 3
    base = dict(command_id="oms0123456789abcdef0", execution_type="ENTRY", side="SELL", quantity=1755,
                filled_qty=1755, created_at="2026-11-30T03:50:00.123456+00:00")
    rows = [
        dict(base, strategy_name="A_VERY_LONG_STRATEGY_NAME_FOR_BANKNIFTY", symbol="BANKNIFTY26JAN27C52000",
             status="SENT_TO_BROKER", broker_status="TRIGGER_PENDING", tag=long_tag),
        dict(base, strategy_name="S1", symbol=NIFTY_CE, status="EXECUTED", broker_status="COMPLETE", tag=None,
             created_at="2026-11-29T09:00:00+00:00"),
    ]
    lines = format_orders(rows)
    assert all(len(line) <= 120 for line in lines), [len(x) for x in lines]
    assert "oms0123456789abcdef0" in lines[2]  # the id is never cut
    assert "09:20:00" in lines[2]  # 03:50 UTC is 09:20 IST
    assert "-- 2026-11-30 --" in lines and "-- 2026-11-29 --" in lines
    assert "SENT" in lines[2] and "TRIGGER" in lines[2] and "GUARD_BLOCKED" in lines[2]
    short = format_orders([rows[1]])
    assert NIFTY_CE in short[-1] and "COMPLETE" in short[-1]
