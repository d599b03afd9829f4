"""OrderStore against a real SQLite file: registration, compare-and-set transitions, broker reports."""

from __future__ import annotations

from datetime import datetime, timedelta

import peewee
import pytest

from actors.store import OrderStore
from messages.commands import (
    AmendExitLeg,
    BrokerOrderReport,
    RegisterAlert,
    SetBrokerOrderId,
    TransitionOrder,
)
from messages.orders import NewOrder
from storage.db import close_database, open_database
from storage.models import Alert, Order, OrderEvent
from tests.symbols import NIFTY_CE, NIFTY_PE


@pytest.fixture
def store(tmp_path):
    db = open_database(tmp_path / "orders.db")
    try:
        yield OrderStore(db)
    finally:
        close_database(db)


def leg(command_id: str, alert_id: str = "tv-1", symbol: str = NIFTY_CE, status: str = "CREATED",
        tag: str | None = None, qty: int = 65, index: int = 0, execution: str = "ENTRY") -> NewOrder:
    return NewOrder(command_id=command_id, alert_id=alert_id, client_id="C1", source="webhook",
                    strategy_name="S1", execution_type=execution, exchange="NFO", symbol=symbol, side="BUY",
                    quantity=qty, product="NRML", order_type="MARKET", status=status, tag=tag, leg_index=index)


def register(store: OrderStore, alert_id: str, *legs: NewOrder, body: str = '{"secret_key": "***"}'):
    return store.register_alert(RegisterAlert(alert_id=alert_id, source="webhook", remote_addr="127.0.0.1",
                                              strategy_name="S1", body=body, legs=legs))


def events(command_id: str) -> list[tuple]:
    rows = OrderEvent.select().where(OrderEvent.command_id == command_id).order_by(OrderEvent.id)
    return [(e.from_status, e.to_status, e.tag) for e in rows]


def order(command_id: str) -> Order:
    return Order.get(Order.command_id == command_id)


def move(store: OrderStore, command_id: str, to_status: str, expect_from=None, tag=None, bid=None):
    result, changes = store.transition(TransitionOrder(command_id=command_id, to_status=to_status,
                                                       expect_from=expect_from, tag=tag, broker_order_id=bid))
    return result, changes


def report(remarks="c1", bid="B1", status="OPEN", filled=0, avg=None, reason=None) -> BrokerOrderReport:
    return BrokerOrderReport(remarks=remarks, broker_order_id=bid, status=status, filled_qty=filled,
                             avg_price=avg, reason=reason, origin="poll")


def sent(store: OrderStore, command_id: str = "c1", bid: str | None = None) -> None:
    register(store, f"alert-{command_id}", leg(command_id, alert_id=f"alert-{command_id}"))
    result, _ = move(store, command_id, "SENT_TO_BROKER", expect_from=("CREATED",))
    assert result.applied
    if bid:
        store.set_broker_order_id(SetBrokerOrderId(command_id=command_id, broker_order_id=bid))


# ---- register_alert ---------------------------------------------------------------------------------

def test_register_inserts_every_leg_one_event_each_and_one_alert_row(store):
    result, changes = register(store, "tv-1", leg("c1", index=0), leg("c2", symbol=NIFTY_PE, index=1))
    assert not result.duplicate and result.http_status == 202
    assert result.response == {"alert_id": "tv-1", "orders": [
        {"command_id": "c1", "tradingsymbol": NIFTY_CE, "status": "CREATED", "tag": None},
        {"command_id": "c2", "tradingsymbol": NIFTY_PE, "status": "CREATED", "tag": None},
    ]}
    assert Order.select().count() == 2
    for cid in ("c1", "c2"):
        row = order(cid)
        assert (row.status, row.filled_qty, row.broker_order_id, row.alert_id) == ("CREATED", 0, None, "tv-1")
        assert events(cid) == [(None, "CREATED", None)]
    assert OrderEvent.select().count() == 2
    alerts = list(Alert.select())
    assert len(alerts) == 1
    assert (alerts[0].alert_id, alerts[0].outcome, alerts[0].http_status) == ("tv-1", "accepted", 202)
    assert [c.to_status for c in changes] == ["CREATED", "CREATED"]
    assert [o.command_id for o in result.orders] == ["c1", "c2"]


def test_register_keeps_a_validation_failed_leg(store):
    result, _ = register(store, "tv-1", leg("c1"), leg("c2", status="FAILED", tag="VALIDATION_FAILED:QTY_NOT_POSITIVE",
                                                       qty=0, index=1))
    assert [o["status"] for o in result.response["orders"]] == ["CREATED", "FAILED"]
    assert result.response["orders"][1]["tag"] == "VALIDATION_FAILED:QTY_NOT_POSITIVE"
    assert (order("c2").status, order("c2").tag) == ("FAILED", "VALIDATION_FAILED:QTY_NOT_POSITIVE")
    assert events("c2") == [(None, "FAILED", "VALIDATION_FAILED:QTY_NOT_POSITIVE")]


def test_times_are_utc_iso8601(store):
    register(store, "tv-1", leg("c1"))
    row = order("c1")
    for text in (row.created_at, row.updated_at, OrderEvent.get().at, Alert.get().received_at):
        assert datetime.fromisoformat(text).utcoffset() == timedelta(0)


def test_same_alert_id_again_is_a_duplicate_returning_the_first_answer(store):
    first, _ = register(store, "tv-1", leg("c1"), leg("c2", index=1))
    again, changes = register(store, "tv-1", leg("c9"), leg("c10", index=1))
    assert again.duplicate is True and again.http_status == 200
    assert again.response == first.response
    assert changes == []
    assert sorted(o.command_id for o in Order.select()) == ["c1", "c2"]
    assert OrderEvent.select().count() == 2
    assert [a.outcome for a in Alert.select().order_by(Alert.id)] == ["accepted", "duplicate"]


def test_different_alert_ids_are_not_duplicates(store):
    register(store, "tv-1", leg("c1", alert_id="tv-1"))
    result, _ = register(store, "tv-2", leg("c2", alert_id="tv-2"))
    assert not result.duplicate and Order.select().count() == 2


def test_registration_is_one_transaction(store):
    # the second leg reuses a command_id: the insert fails and nothing of the alert may remain
    with pytest.raises(peewee.IntegrityError):
        register(store, "tv-1", leg("c1"), leg("c1", index=1))
    assert Order.select().count() == 0
    assert OrderEvent.select().count() == 0
    assert Alert.select().count() == 0
    # and the alert can be registered properly afterwards
    result, _ = register(store, "tv-1", leg("c1"), leg("c2", index=1))
    assert not result.duplicate and Order.select().count() == 2


# ---- transition (compare-and-set) ---------------------------------------------------------------------

def test_applied_transition_appends_exactly_one_event(store):
    register(store, "tv-1", leg("c1"))
    result, changes = move(store, "c1", "SENT_TO_BROKER", expect_from=("CREATED",))
    assert result.applied and result.order.status == "SENT_TO_BROKER"
    assert order("c1").status == "SENT_TO_BROKER"
    assert events("c1") == [(None, "CREATED", None), ("CREATED", "SENT_TO_BROKER", None)]
    assert len(changes) == 1 and (changes[0].from_status, changes[0].to_status) == ("CREATED", "SENT_TO_BROKER")


def test_only_one_of_two_compare_and_sets_wins(store):
    register(store, "tv-1", leg("c1"))
    first, _ = move(store, "c1", "SENT_TO_BROKER", expect_from=("CREATED",))
    second, changes = move(store, "c1", "SENT_TO_BROKER", expect_from=("CREATED",))
    assert first.applied and not second.applied and changes == []
    assert [e[1] for e in events("c1")] == ["CREATED", "SENT_TO_BROKER"]


def test_expect_from_mismatch_is_refused_and_nothing_written(store):
    register(store, "tv-1", leg("c1"))
    before = order("c1")
    result, changes = move(store, "c1", "FAILED", expect_from=("SENT_TO_BROKER",), tag="LOST_IN_FLIGHT")
    assert not result.applied and changes == []
    after = order("c1")
    assert (after.status, after.tag, after.updated_at) == ("CREATED", None, before.updated_at)
    assert events("c1") == [(None, "CREATED", None)]


@pytest.mark.parametrize("path,illegal", [
    ((), "EXECUTED"), ((), "PARTIAL"), ((), "CREATED"),
    (("SENT_TO_BROKER",), "CREATED"), (("SENT_TO_BROKER",), "SENT_TO_BROKER"),
    (("SENT_TO_BROKER", "EXECUTED"), "FAILED"), (("SENT_TO_BROKER", "EXECUTED"), "PARTIAL"),
    (("FAILED",), "SENT_TO_BROKER"), (("FAILED",), "CREATED"),
    # FAILED moves on only through broker-reported fills, never by a plain TransitionOrder
    (("FAILED",), "EXECUTED"), (("FAILED",), "PARTIAL"),
])
def test_illegal_transition_is_refused_and_nothing_written(store, path, illegal):
    register(store, "tv-1", leg("c1"))
    for status in path:
        assert move(store, "c1", status)[0].applied
    before = order("c1")
    n_events = OrderEvent.select().count()
    result, changes = move(store, "c1", illegal)
    assert not result.applied and changes == []
    after = order("c1")
    assert (after.status, after.tag, after.updated_at) == (before.status, before.tag, before.updated_at)
    assert OrderEvent.select().count() == n_events


def test_block_sets_failed_with_its_tag(store):
    register(store, "tv-1", leg("c1"))
    result, changes = move(store, "c1", "FAILED", expect_from=("CREATED",), tag="GUARD_BLOCKED:NO_POSITION")
    assert result.applied
    assert (order("c1").status, order("c1").tag) == ("FAILED", "GUARD_BLOCKED:NO_POSITION")
    assert events("c1")[-1] == ("CREATED", "FAILED", "GUARD_BLOCKED:NO_POSITION")
    assert changes[0].tag == "GUARD_BLOCKED:NO_POSITION"


def test_transition_of_unknown_order_is_refused(store):
    result, changes = move(store, "nope", "FAILED")
    assert not result.applied and changes == []
    assert OrderEvent.select().count() == 0


def test_transition_can_store_the_broker_order_id(store):
    register(store, "tv-1", leg("c1"))
    move(store, "c1", "SENT_TO_BROKER", expect_from=("CREATED",), bid="B77")
    assert order("c1").broker_order_id == "B77"


# ---- set_broker_order_id ----------------------------------------------------------------------------

def test_set_broker_order_id_stores_it_without_a_transition_event(store):
    sent(store, "c1")
    n_events = OrderEvent.select().count()
    changes = store.set_broker_order_id(SetBrokerOrderId(command_id="c1", broker_order_id="24010100001"))
    assert order("c1").broker_order_id == "24010100001" and order("c1").status == "SENT_TO_BROKER"
    assert OrderEvent.select().count() == n_events
    assert len(changes) == 1
    assert changes[0].from_status == changes[0].to_status == "SENT_TO_BROKER"
    assert changes[0].order.broker_order_id == "24010100001"


def test_set_broker_order_id_again_is_a_no_op_and_never_replaced(store):
    sent(store, "c1", bid="B1")
    assert store.set_broker_order_id(SetBrokerOrderId(command_id="c1", broker_order_id="B1")) == []
    assert store.set_broker_order_id(SetBrokerOrderId(command_id="c1", broker_order_id="B2")) == []
    assert order("c1").broker_order_id == "B1"


def test_set_broker_order_id_for_unknown_order_writes_nothing(store):
    assert store.set_broker_order_id(SetBrokerOrderId(command_id="nope", broker_order_id="B1")) == []
    assert Order.select().count() == 0


# ---- apply_broker_report ----------------------------------------------------------------------------

def test_report_matched_by_remarks(store):
    sent(store, "c1")
    result, changes = store.apply_broker_report(report(remarks="c1", bid="B1", status="COMPLETE", filled=65,
                                                       avg=101.5))
    assert result.matched and result.command_id == "c1" and result.changed
    row = order("c1")
    assert (row.status, row.filled_qty, row.avg_price, row.broker_order_id) == ("EXECUTED", 65, 101.5, "B1")
    assert events("c1")[-1] == ("SENT_TO_BROKER", "EXECUTED", None)
    assert changes[0].to_status == "EXECUTED" and changes[0].fill_delta == 65


@pytest.mark.parametrize("remarks", [None, "", "not-ours"])
def test_report_matched_by_broker_order_id(store, remarks):
    sent(store, "c1", bid="B1")
    result, _ = store.apply_broker_report(report(remarks=remarks, bid="B1", status="OPEN", filled=20, avg=99.0))
    assert result.matched and result.command_id == "c1"
    assert (order("c1").status, order("c1").filled_qty) == ("PARTIAL", 20)


def test_unmatched_report_writes_nothing(store):
    sent(store, "c1", bid="B1")
    n_events = OrderEvent.select().count()
    result, changes = store.apply_broker_report(report(remarks="other", bid="B999", status="COMPLETE", filled=1))
    assert not result.matched and changes == []
    assert order("c1").status == "SENT_TO_BROKER" and OrderEvent.select().count() == n_events


@pytest.mark.parametrize("status,filled", [("COMPLETE", 65), ("OPEN", 20), ("REJECTED", 0), ("CANCELED", 0),
                                           ("EXPIRED", 0)])
def test_same_report_twice_writes_one_event(store, status, filled):
    sent(store, "c1")
    rep = report(status=status, filled=filled, avg=100.0 if filled else None, reason="no margin")
    first, _ = store.apply_broker_report(rep)
    n_events = OrderEvent.select().count()
    updated = order("c1").updated_at
    second, changes = store.apply_broker_report(rep)
    assert first.changed and second.matched and not second.changed and changes == []
    assert OrderEvent.select().count() == n_events
    assert order("c1").updated_at == updated
    assert len(events("c1")) == 3  # registered, sent, one broker transition


def test_fills_are_kept_on_cancel(store):
    sent(store, "c1")
    store.apply_broker_report(report(status="OPEN", filled=20, avg=99.0))
    store.apply_broker_report(report(status="CANCELLED", filled=20, avg=99.0))
    row = order("c1")
    assert row.status == "FAILED" and row.tag.startswith("BROKER_CANCELED")
    assert (row.filled_qty, row.avg_price) == (20, 99.0)
    assert [e[1] for e in events("c1")] == ["CREATED", "SENT_TO_BROKER", "PARTIAL", "FAILED"]


def test_rejected_report_tags_the_broker_reason(store):
    sent(store, "c1")
    store.apply_broker_report(report(status="REJECTED", reason="RMS: Margin Exceeds"))
    assert (order("c1").status, order("c1").tag) == ("FAILED", "BROKER_REJECTED:RMS: Margin Exceeds")


def test_stale_report_after_execution_changes_nothing(store):
    sent(store, "c1")
    store.apply_broker_report(report(status="COMPLETE", filled=65, avg=100.0))
    n_events = OrderEvent.select().count()
    _, changes = store.apply_broker_report(report(status="OPEN", filled=20, avg=98.0))
    row = order("c1")
    assert changes == [] and (row.status, row.filled_qty, row.avg_price) == ("EXECUTED", 65, 100.0)
    assert OrderEvent.select().count() == n_events


def test_growing_partial_fills_append_partial_events(store):
    sent(store, "c1")
    store.apply_broker_report(report(status="OPEN", filled=20, avg=99.0))
    _, changes = store.apply_broker_report(report(status="OPEN", filled=40, avg=99.5))
    assert order("c1").filled_qty == 40
    assert events("c1")[-2:] == [("SENT_TO_BROKER", "PARTIAL", None), ("PARTIAL", "PARTIAL", None)]
    assert changes[0].prev_filled_qty == 20 and changes[0].fill_delta == 20


def test_lost_in_flight_then_complete_is_executed(store):
    sent(store, "c1")
    assert move(store, "c1", "FAILED", expect_from=("SENT_TO_BROKER",), tag="LOST_IN_FLIGHT")[0].applied
    result, _ = store.apply_broker_report(report(remarks="c1", bid="B5", status="COMPLETE", filled=65, avg=100.0))
    row = order("c1")
    assert result.changed and (row.status, row.filled_qty, row.broker_order_id) == ("EXECUTED", 65, "B5")
    assert events("c1")[-1][:2] == ("FAILED", "EXECUTED")


def test_failed_takes_the_brokers_reason_without_moving(store):
    sent(store, "c1")
    move(store, "c1", "FAILED", expect_from=("SENT_TO_BROKER",), tag="LOST_IN_FLIGHT")
    before = len(events("c1"))
    store.apply_broker_report(report(status="REJECTED", reason="x"))
    assert (order("c1").status, order("c1").tag) == ("FAILED", "BROKER_REJECTED:x")
    assert len(events("c1")) == before  # FAILED -> FAILED is no transition: no event


def test_complete_report_for_a_created_order_is_adopted_and_executed(store):
    register(store, "tv-1", leg("c1"))
    store.apply_broker_report(report(remarks="c1", bid="B1", status="COMPLETE", filled=65, avg=100.0))
    row = order("c1")
    assert row.status == "EXECUTED" and row.filled_qty == 65
    assert [e[1] for e in events("c1")] == ["CREATED", "SENT_TO_BROKER", "EXECUTED"]


def test_lost_in_flight_then_canceled_with_fills_is_settled_by_one_report(store):
    sent(store, "c1")
    move(store, "c1", "FAILED", expect_from=("SENT_TO_BROKER",), tag="LOST_IN_FLIGHT")
    rep = report(status="CANCELED", filled=20, avg=99.0)
    store.apply_broker_report(rep)
    assert (order("c1").status, order("c1").filled_qty) == ("FAILED", 20)
    assert store.apply_broker_report(rep)[1] == []


# ---- amend_exit_leg ---------------------------------------------------------------------------------

def test_amend_exit_leg_only_while_created(store):
    register(store, "tv-1", leg("c1", execution="EXIT", qty=100))
    result = store.amend_exit_leg(AmendExitLeg(command_id="c1", side="SELL", quantity=65, product="MIS"))
    assert result.applied
    row = order("c1")
    assert (row.side, row.quantity, row.product) == ("SELL", 65, "MIS")
    move(store, "c1", "SENT_TO_BROKER")
    again = store.amend_exit_leg(AmendExitLeg(command_id="c1", side="BUY", quantity=1, product="NRML"))
    assert not again.applied and (order("c1").side, order("c1").quantity) == ("SELL", 65)
