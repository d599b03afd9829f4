"""OrderStore's constant-SQL hot path: the rows and snapshots it writes, and how it treats broker reports.

A report that changes nothing is decided on a plain read and takes no write lock. A report that changes
something is planned again under the write lock, so a write by another connection between the two reads is
never overwritten.
"""

from __future__ import annotations

import sqlite3
import threading

import pytest

from actors import store as store_module
from actors.store import ORDER_COLUMNS, OrderStore
from messages.commands import BrokerOrderReport, RegisterAlert, SetBrokerOrderId, TransitionOrder
from messages.orders import NewOrder, OrderSnapshot
from storage.db import close_database, open_database
from storage.models import Alert, ExternalOrder, Order, OrderEvent
from tests.symbols import NIFTY_CE

WRITES = ("BEGIN", "INSERT", "UPDATE", "DELETE", "REPLACE", "COMMIT")


@pytest.fixture
def db(tmp_path):
    db = open_database(tmp_path / "orders.db")
    try:
        yield db
    finally:
        close_database(db)


@pytest.fixture
def store(db):
    return OrderStore(db)


@pytest.fixture
def other(tmp_path, db):
    """A second connection on the same file, as RiskActor or another process would hold."""
    conn = sqlite3.connect(tmp_path / "orders.db", timeout=5, isolation_level=None, check_same_thread=False)
    try:
        yield conn
    finally:
        conn.close()


def leg(command_id: str, alert_id: str = "tv-1", **kw) -> NewOrder:
    data = dict(command_id=command_id, alert_id=alert_id, client_id="C1", source="webhook", strategy_name="S1",
                execution_type="ENTRY", exchange="NFO", symbol=NIFTY_CE, side="BUY", quantity=65,
                product="NRML", order_type="MARKET")
    data.update(kw)
    return NewOrder(**data)


def sent(store: OrderStore, command_id: str = "c1", bid: str | None = "B1") -> None:
    result, _ = store.register_alert(RegisterAlert(alert_id=f"a-{command_id}", source="webhook",
                                                   legs=(leg(command_id, alert_id=f"a-{command_id}"),)))
    assert result.http_status == 202
    claim, _ = store.transition(TransitionOrder(command_id=command_id, to_status="SENT_TO_BROKER",
                                                expect_from=("CREATED",), detail="sending PlaceOrder"))
    assert claim.applied
    if bid:
        assert store.set_broker_order_id(SetBrokerOrderId(command_id=command_id, broker_order_id=bid))


def report(status="OPEN", filled=0, avg=None, remarks="c1", bid="B1", reason=None) -> BrokerOrderReport:
    return BrokerOrderReport(remarks=remarks, broker_order_id=bid, status=status, filled_qty=filled, avg_price=avg,
                             reason=reason, origin="ws", exchange="NFO", symbol=NIFTY_CE, side="BUY",
                             quantity=65)


def events(command_id: str) -> list[tuple]:
    rows = OrderEvent.select().where(OrderEvent.command_id == command_id).order_by(OrderEvent.id)
    return [(e.from_status, e.to_status, e.tag, e.detail) for e in rows]


def db_snapshot(command_id: str) -> OrderSnapshot:
    return OrderSnapshot.model_validate(Order.get(Order.command_id == command_id).__data__)


class Statements:
    """Every statement the store's connection runs while recording (sqlite3 trace callback)."""

    def __init__(self, db):
        self.db, self.sql = db, []

    def __enter__(self):
        self.db.connection().set_trace_callback(self.sql.append)
        return self

    def __exit__(self, *exc):
        self.db.connection().set_trace_callback(None)

    def writes(self) -> list[str]:
        return [s for s in self.sql if s.lstrip().upper().startswith(WRITES)]


def between_read_and_write(db, write):
    """Runs `write` on another thread exactly when the store begins its write transaction, i.e. after the
    store's plain read and before it holds the write lock (the trace fires before BEGIN IMMEDIATE runs)."""
    done: list[threading.Thread] = []

    def trace(sql: str) -> None:
        if sql.lstrip().upper().startswith("BEGIN") and not done:
            done.append(threading.Thread(target=write))
            done[0].start()
            done[0].join(2)  # commits at once: the store does not hold the write lock yet

    db.connection().set_trace_callback(trace)
    return done


# ---- the schema and the constant SQL agree ---------------------------------------------------------------

def test_order_columns_are_the_tables_columns(db):
    in_table = [r[1] for r in db.execute_sql('PRAGMA table_info("orders")').fetchall()]
    assert list(ORDER_COLUMNS) == in_table
    assert list(ORDER_COLUMNS) == [f.column_name for f in Order._meta.sorted_fields]
    event_columns = [r[1] for r in db.execute_sql('PRAGMA table_info("order_events")').fetchall()]
    assert ["id", *store_module._EVENT_COLUMNS] == event_columns
    assert set(store_module._ORDER_MUTABLE) <= set(ORDER_COLUMNS)


def test_a_registered_row_reads_back_as_peewee_reads_it(store):
    result, _ = store.register_alert(RegisterAlert(
        alert_id="tv-1", source="webhook", remote_addr="10.0.0.1", strategy_name="S1", body="{}",
        legs=(leg("c1", order_type="SL", price=101.5, trigger_price=100.25, leg_index=0),
              leg("c2", quantity=0, status="FAILED", tag="VALIDATION_FAILED:QTY_NOT_POSITIVE", leg_index=1,
                  parent_command_id=None))))
    for cid, published in zip(("c1", "c2"), result.orders):
        peewee_row = Order.get(Order.command_id == cid).__data__
        assert store.get_order(cid) == peewee_row
        assert {k: type(v) for k, v in store.get_order(cid).items()} == {k: type(v) for k, v in peewee_row.items()}
        assert published == db_snapshot(cid)
    assert (Order.get(Order.command_id == "c1").price, Order.get(Order.command_id == "c1").trigger_price) == (
        101.5, 100.25)
    alert = Alert.get()
    assert (alert.alert_id, alert.source, alert.remote_addr, alert.outcome, alert.http_status, alert.strategy_name,
            alert.body, alert.error) == ("tv-1", "webhook", "10.0.0.1", "accepted", 202, "S1", "{}", None)
    assert events("c2") == [(None, "FAILED", "VALIDATION_FAILED:QTY_NOT_POSITIVE", "registered")]


def test_every_published_snapshot_is_the_committed_row(store):
    _, changes = store.register_alert(RegisterAlert(alert_id="a-c1", source="webhook", legs=(leg("c1", "a-c1"),)))
    published = list(changes)
    published += store.transition(TransitionOrder(command_id="c1", to_status="SENT_TO_BROKER",
                                                  expect_from=("CREATED",)))[1]
    assert published[-1].order == db_snapshot("c1")
    published += store.set_broker_order_id(SetBrokerOrderId(command_id="c1", broker_order_id="B1"))
    assert published[-1].order == db_snapshot("c1")
    published += store.apply_broker_report(report("OPEN", filled=20, avg=99.0))[1]
    assert published[-1].order == db_snapshot("c1")
    published += store.apply_broker_report(report("COMPLETE", filled=65, avg=100.0))[1]
    assert published[-1].order == db_snapshot("c1")
    assert [(c.from_status, c.to_status, c.prev_filled_qty, c.prev_broker_order_id) for c in published] == [
        (None, "CREATED", 0, None), ("CREATED", "SENT_TO_BROKER", 0, None), ("SENT_TO_BROKER", "SENT_TO_BROKER", 0, None),
        ("SENT_TO_BROKER", "PARTIAL", 0, "B1"), ("PARTIAL", "EXECUTED", 20, "B1")]
    assert [e[:2] for e in events("c1")] == [(None, "CREATED"), ("CREATED", "SENT_TO_BROKER"),
                                             ("SENT_TO_BROKER", "PARTIAL"), ("PARTIAL", "EXECUTED")]
    assert events("c1")[-1][3] == "broker COMPLETE via ws"


def test_writes_are_immediate_transactions(db, store):
    store.register_alert(RegisterAlert(alert_id="a-c1", source="webhook", legs=(leg("c1", "a-c1"),)))
    with Statements(db) as seen:
        assert store.transition(TransitionOrder(command_id="c1", to_status="SENT_TO_BROKER",
                                                expect_from=("CREATED",)))[0].applied
    writes = seen.writes()
    assert writes[0] == "BEGIN IMMEDIATE" and writes[-1] == "COMMIT"
    cas = [s for s in writes if s.startswith("UPDATE")]
    assert len(cas) == 1 and '"command_id" = ' in cas[0] and '"status" = ' in cas[0]


# ---- no-op reports ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("status", ["PENDING", "OPEN", "NEW", "TRIGGER_PENDING"])
def test_a_no_op_report_only_reads(db, store, status):
    sent(store)
    # The first such report records the broker's status (broker_status, in the store's next batch); the same
    # report again is a no-op.
    store.apply_broker_report(report(status))
    assert store.flush_broker_statuses() == 1
    before, n_events = store.get_order("c1"), OrderEvent.select().count()
    with Statements(db) as seen:
        result, changes = store.apply_broker_report(report(status))
    assert (result.matched, result.command_id, result.changed, changes) == (True, "c1", False, [])
    assert seen.writes() == [] and seen.sql and all(s.startswith("SELECT") for s in seen.sql)
    assert store.get_order("c1") == before and OrderEvent.select().count() == n_events


def test_a_no_op_report_is_not_held_up_by_another_writer(store, other):
    sent(store)
    store.apply_broker_report(report("COMPLETE", filled=65, avg=100.0))
    other.execute("BEGIN IMMEDIATE")  # another connection holds the write lock for the whole call
    try:
        result, changes = store.apply_broker_report(report("COMPLETE", filled=65, avg=100.0))  # a poll repeat
        assert result.matched and not result.changed and changes == []
    finally:
        other.execute("ROLLBACK")


def test_a_report_that_changes_something_still_writes(db, store):
    sent(store, bid=None)
    with Statements(db) as seen:
        result, changes = store.apply_broker_report(report("OPEN"))  # carries the broker id we lack
    assert result.changed and [c.order.broker_order_id for c in changes] == ["B1"]
    assert seen.writes()[0] == "BEGIN IMMEDIATE"
    assert store.get_order("c1")["broker_order_id"] == "B1"


# ---- a write by another connection between the plain read and the write transaction ----------------------

@pytest.mark.parametrize("start", ["SENT_TO_BROKER", "PARTIAL"])
def test_fills_written_meanwhile_are_not_overwritten(db, store, other, start):
    sent(store)
    if start == "PARTIAL":
        assert store.apply_broker_report(report("OPEN", filled=20, avg=99.0))[0].changed

    def more_fills():  # another writer records 40 filled while the store plans on what it read
        other.execute("UPDATE orders SET status = 'PARTIAL', filled_qty = 40, avg_price = 99.5 "
                      "WHERE command_id = 'c1'")

    n_events = len(events("c1"))
    writers = between_read_and_write(db, more_fills)
    try:
        # news older than the other write, but newer than what the store read: it plans a write
        result, changes = store.apply_broker_report(report("OPEN", filled=30, avg=99.2))
    finally:
        db.connection().set_trace_callback(None)
    assert writers and not writers[0].is_alive(), "the concurrent write was not exercised"
    row = store.get_order("c1")
    assert (row["status"], row["filled_qty"], row["avg_price"]) == ("PARTIAL", 40, 99.5)
    assert row["broker_status"] == "OPEN"
    # From SENT_TO_BROKER the report's OPEN is still news (broker_status); its fills are not.
    assert result.matched and result.changed == (start == "SENT_TO_BROKER")
    assert all(c.order.filled_qty == 40 for c in changes)
    assert len(events("c1")) == n_events


def test_a_status_changed_meanwhile_is_planned_again_not_missed(db, store, other):
    sent(store)

    def lost_in_flight():  # the status the store read (SENT_TO_BROKER) is gone: a CAS on it would miss
        other.execute("UPDATE orders SET status = 'FAILED', tag = 'LOST_IN_FLIGHT' WHERE command_id = 'c1'")

    writers = between_read_and_write(db, lost_in_flight)
    try:
        result, changes = store.apply_broker_report(report("COMPLETE", filled=65, avg=100.0))
    finally:
        db.connection().set_trace_callback(None)
    assert writers and not writers[0].is_alive(), "the concurrent write was not exercised"
    row = store.get_order("c1")
    assert (row["status"], row["tag"], row["filled_qty"], row["avg_price"]) == ("EXECUTED", None, 65, 100.0)
    assert result.changed and [(c.from_status, c.to_status) for c in changes] == [("FAILED", "EXECUTED")]
    assert events("c1")[-1][:2] == ("FAILED", "EXECUTED")
    assert changes[0].order == db_snapshot("c1")


def test_the_claim_compare_and_set_still_refuses_a_row_that_moved(db, store, other):
    store.register_alert(RegisterAlert(alert_id="a-c1", source="webhook", legs=(leg("c1", "a-c1"),)))
    other.execute("UPDATE orders SET status = 'FAILED', tag = 'GUARD_BLOCKED:X' WHERE command_id = 'c1'")
    result, changes = store.transition(TransitionOrder(command_id="c1", to_status="SENT_TO_BROKER",
                                                       expect_from=("CREATED",)))
    assert (result.applied, result.reason, changes) == (False, "STATUS_IS_FAILED", [])
    assert store.get_order("c1")["status"] == "FAILED"


def test_apply_refuses_when_the_status_is_not_the_one_it_read(db, store, other):
    """The compare-and-set itself: a row dict that is out of date does not overwrite the committed row."""
    sent(store)
    stale = store.get_order("c1")
    other.execute("UPDATE orders SET status = 'PARTIAL', filled_qty = 10 WHERE command_id = 'c1'")
    with db.atomic():
        assert store._apply(stale, "EXECUTED", None, "test", filled_qty=65) is None
    row = store.get_order("c1")
    assert (row["status"], row["filled_qty"]) == ("PARTIAL", 10)
    assert [e[1] for e in events("c1")] == ["CREATED", "SENT_TO_BROKER"]


# ---- reports that are not ours ---------------------------------------------------------------------------

def test_an_external_order_is_recorded_once_and_then_kept_up_to_date(store):
    sent(store)
    first, changes = store.apply_broker_report(report("OPEN", remarks="someone else", bid="X9"))
    assert (first.matched, first.external, changes) == (False, True, [])
    seen = ExternalOrder.get(ExternalOrder.broker_order_id == "X9")
    assert (seen.remarks, seen.exchange, seen.symbol, seen.side, seen.quantity, seen.status, seen.filled_qty) == (
        "someone else", "NFO", NIFTY_CE, "BUY", 65, "OPEN", 0)
    again, _ = store.apply_broker_report(report("COMPLETE", filled=65, remarks="someone else", bid="X9"))
    assert (again.matched, again.external) == (False, False)
    now = ExternalOrder.get(ExternalOrder.broker_order_id == "X9")
    assert (now.status, now.filled_qty, now.first_seen_at) == ("COMPLETE", 65, seen.first_seen_at)
    assert now.last_seen_at >= seen.last_seen_at and ExternalOrder.select().count() == 1
    assert store.get_order("c1")["status"] == "SENT_TO_BROKER"


def test_a_report_without_remarks_is_matched_by_broker_id(store):
    sent(store, bid="B7")
    result, changes = store.apply_broker_report(report("COMPLETE", filled=65, avg=100.0, remarks=None, bid="B7"))
    assert result.matched and result.command_id == "c1" and changes[-1].to_status == "EXECUTED"
