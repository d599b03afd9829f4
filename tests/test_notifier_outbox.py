"""Pure tests of the notifier's Outbox (retry schedule) and describe_change."""

from __future__ import annotations

import pytest

from actors.notifier import Outbox, describe_change
from messages.commands import Notify
from messages.orders import OrderChanged, OrderSnapshot
from tests.symbols import NIFTY_CE

NOW = "2026-01-01T09:15:00.000000+00:00"


def note(text: str) -> Notify:
    return Notify(kind="alert", text=text)


# ---- Outbox -----------------------------------------------------------------------------------------

def test_new_messages_are_due_at_once_in_order():
    box = Outbox(max_attempts=3)
    box.add(note("a"))
    box.add(note("b"))
    assert box.due(0.0).note.text == "a"
    box.delivered()
    assert box.due(0.0).note.text == "b"
    box.delivered()
    assert box.due(0.0) is None and not box.queue


def test_failed_head_backs_off_exponentially_with_a_cap():
    box = Outbox(max_attempts=100, base_delay_s=0.5, max_delay_s=4.0)
    box.add(note("a"))
    now = 1000.0
    delays = []
    for _ in range(6):
        assert box.failed(now) is None
        head = box.queue[0]
        delays.append(head.next_at - now)
        assert box.due(now) is None                      # not due before its time
        assert box.due(head.next_at - 0.001) is None
        assert box.due(head.next_at) is head             # due at its time
        now = head.next_at
    assert delays == pytest.approx([0.5, 1.0, 2.0, 4.0, 4.0, 4.0])


def test_order_is_kept_while_the_head_waits():
    box = Outbox(max_attempts=5, base_delay_s=1.0)
    box.add(note("first"))
    box.add(note("second"))
    box.failed(10.0)
    assert box.due(10.5) is None              # the second never overtakes the first
    assert box.due(11.0).note.text == "first"
    box.delivered()
    assert box.due(11.0).note.text == "second"


def test_gives_up_after_max_attempts_and_moves_on():
    box = Outbox(max_attempts=3, base_delay_s=0.1)
    box.add(note("a"))
    box.add(note("b"))
    now = 0.0
    assert box.failed(now) is None
    assert box.failed(now) is None
    given_up = box.failed(now)
    assert given_up is not None and given_up.note.text == "a" and given_up.attempts == 3
    assert [p.note.text for p in box.queue] == ["b"]
    assert box.due(now).note.text == "b"


def test_max_attempts_one_gives_up_on_first_failure():
    box = Outbox(max_attempts=1)
    box.add(note("a"))
    assert box.failed(0.0).note.text == "a"
    assert not box.queue


# ---- describe_change ----------------------------------------------------------------------------------

def snap(status="SENT_TO_BROKER", filled=0, avg=None, bid=None, tag=None) -> OrderSnapshot:
    return OrderSnapshot(
        command_id="cmd1", alert_id="a1", client_id="C1", source="webhook", strategy_name="S1",
        execution_type="ENTRY", exchange="NFO", symbol=NIFTY_CE, side="BUY", quantity=65,
        product="NRML", order_type="MARKET", price=0.0, trigger_price=None, status=status, tag=tag,
        broker_order_id=bid, filled_qty=filled, avg_price=avg, created_at=NOW, updated_at=NOW)


def test_executed_is_a_filled_notification():
    n = describe_change(OrderChanged(order=snap("EXECUTED", 65, 101.25), from_status="SENT_TO_BROKER",
                                     to_status="EXECUTED"))
    assert n.kind == "filled" and n.command_id == "cmd1"
    assert NIFTY_CE in n.text and "65" in n.text and "101.25" in n.text


def test_partial_with_new_fills_is_a_partial_notification():
    n = describe_change(OrderChanged(order=snap("PARTIAL", 20, 100.0), from_status="SENT_TO_BROKER",
                                     to_status="PARTIAL", prev_filled_qty=0))
    assert n.kind == "partial" and "20/65" in n.text


def test_partial_without_new_fills_is_silent():
    assert describe_change(OrderChanged(order=snap("PARTIAL", 20, 100.0), from_status="PARTIAL",
                                        to_status="PARTIAL", prev_filled_qty=20)) is None


@pytest.mark.parametrize("tag,kind", [
    ("VALIDATION_FAILED:QTY_NOT_POSITIVE", "blocked"), ("RISK_BLOCKED:DAILY_LOSS_HIT", "blocked"),
    ("GUARD_BLOCKED:NO_POSITION", "blocked"), ("DUPLICATE_BLOCKED:OPEN_ORDER_EXISTS", "blocked"),
    ("BROKER_REJECTED:Insufficient margin", "rejected"), ("BROKER_CANCELED", "cancelled"),
    ("BROKER_CANCELED:Canceled by user", "cancelled"), ("BROKER_EXPIRED", "rejected"),
    ("LOST_IN_FLIGHT", "rejected"),
])
def test_failed_notifications_carry_the_tag(tag, kind):
    n = describe_change(OrderChanged(order=snap("FAILED", tag=tag), from_status="CREATED", to_status="FAILED",
                                     tag=tag))
    assert n.kind == kind and tag in n.text


def test_a_cancel_is_told_as_cancelled_not_as_a_failure():
    tag = "BROKER_CANCELED"
    n = describe_change(OrderChanged(order=snap("FAILED", tag=tag), from_status="SENT_TO_BROKER",
                                     to_status="FAILED", tag=tag))
    assert n.kind == "cancelled" and n.text.startswith("Cancelled ") and "Failed" not in n.text
    part = describe_change(OrderChanged(order=snap("FAILED", 20, 100.0, tag=tag), from_status="PARTIAL",
                                        to_status="FAILED", tag=tag, prev_filled_qty=20))
    assert part.kind == "cancelled" and "20/65 filled before" in part.text


def test_failed_at_registration_is_notified():
    tag = "VALIDATION_FAILED:QTY_NOT_POSITIVE"
    n = describe_change(OrderChanged(order=snap("FAILED", tag=tag), from_status=None, to_status="FAILED", tag=tag))
    assert n is not None and n.kind == "blocked"


def test_broker_accepted_is_a_placed_notification():
    n = describe_change(OrderChanged(order=snap("SENT_TO_BROKER", bid="24012000000123"),
                                     from_status="SENT_TO_BROKER", to_status="SENT_TO_BROKER",
                                     detail="broker accepted"))
    assert n.kind == "placed" and "24012000000123" in n.text


@pytest.mark.parametrize("from_status,to_status", [(None, "CREATED"), ("CREATED", "SENT_TO_BROKER")])
def test_uninteresting_changes_are_silent(from_status, to_status):
    assert describe_change(OrderChanged(order=snap(to_status), from_status=from_status,
                                        to_status=to_status)) is None


def test_lost_then_executed_is_a_filled_notification():
    n = describe_change(OrderChanged(order=snap("EXECUTED", 65, 100.0), from_status="FAILED",
                                     to_status="EXECUTED"))
    assert n.kind == "filled"
