"""Pure tests of the status table and of `plan_broker_update` (shared/DESIGN.md, "Status transitions")."""

from __future__ import annotations

import itertools

import pytest

from storage.transitions import (
    CREATED,
    EXECUTED,
    FAILED,
    PARTIAL,
    SENT_TO_BROKER,
    STATUSES,
    BrokerView,
    OrderState,
    is_allowed,
    normalise_broker_status,
    plan_broker_update,
)

# The table of DESIGN.md, written out independently of storage/transitions.py.
TABLE = {
    CREATED: {SENT_TO_BROKER, FAILED},
    SENT_TO_BROKER: {PARTIAL, EXECUTED, FAILED},
    PARTIAL: {PARTIAL, EXECUTED, FAILED},
    FAILED: {PARTIAL, EXECUTED},
    EXECUTED: set(),
}


def state(status=SENT_TO_BROKER, filled=0, avg=None, bid="B1", tag=None) -> OrderState:
    return OrderState(status=status, filled_qty=filled, avg_price=avg, broker_order_id=bid, tag=tag)


def view(status, filled=0, avg=None, bid="B1", reason=None) -> BrokerView:
    return BrokerView(status=normalise_broker_status(status), filled_qty=filled, avg_price=avg,
                      broker_order_id=bid, reason=reason)


def apply(current: OrderState, plan) -> OrderState:
    """What the store does with a plan."""
    if plan is None:
        return current
    return OrderState(status=plan.to_status or current.status, filled_qty=plan.filled_qty,
                      avg_price=plan.avg_price, broker_order_id=plan.broker_order_id,
                      tag=plan.tag)


RANK = {CREATED: 0, SENT_TO_BROKER: 1, PARTIAL: 2, FAILED: 2, EXECUTED: 3}


# ---- the table --------------------------------------------------------------------------------------

@pytest.mark.parametrize("src,dst", list(itertools.product(STATUSES, STATUSES)))
def test_is_allowed_matches_the_design_table(src, dst):
    assert is_allowed(src, dst) is (dst in TABLE[src])


def test_statuses_are_exactly_the_five_of_the_design():
    assert set(STATUSES) == set(TABLE)


@pytest.mark.parametrize("src,dst", [("CREATED", "EXECUTED"), ("EXECUTED", "FAILED"), ("NOPE", "FAILED"),
                                     ("CREATED", "NOPE"), (None, "CREATED")])
def test_unknown_or_illegal_pairs_are_refused(src, dst):
    assert not is_allowed(src, dst)


@pytest.mark.parametrize("raw,expected", [
    ("COMPLETE", "COMPLETE"), ("complete", "COMPLETE"), (" Complete ", "COMPLETE"),
    ("CANCELED", "CANCELED"), ("CANCELLED", "CANCELED"), ("Canceled", "CANCELED"), ("cancelled", "CANCELED"),
    ("REJECTED", "REJECTED"), ("Reject", "REJECTED"), ("OPEN", "OPEN"), ("Open", "OPEN"),
    ("EXPIRED", "EXPIRED"), ("TRIGGER_PENDING", "TRIGGER_PENDING"), ("trigger pending", "TRIGGER_PENDING"),
    (None, ""), ("", ""),
])
def test_normalise_broker_status(raw, expected):
    assert normalise_broker_status(raw) == expected


# ---- broker reports ---------------------------------------------------------------------------------

def test_complete_moves_sent_order_to_executed_with_fills_and_price():
    plan = plan_broker_update(state(SENT_TO_BROKER, bid=None), view("COMPLETE", 65, 101.5, bid="B9"))
    assert plan is not None
    assert plan.to_status == EXECUTED
    assert plan.filled_qty == 65
    assert plan.avg_price == 101.5
    assert plan.broker_order_id == "B9"


def test_complete_moves_partial_to_executed():
    plan = plan_broker_update(state(PARTIAL, 20, 100.0), view("COMPLETE", 65, 100.4))
    assert (plan.to_status, plan.filled_qty, plan.avg_price) == (EXECUTED, 65, 100.4)


def test_open_with_fills_is_partial():
    plan = plan_broker_update(state(SENT_TO_BROKER), view("OPEN", 20, 99.0))
    assert plan.to_status == PARTIAL
    assert plan.filled_qty == 20


def test_open_without_fills_changes_no_status():
    plan = plan_broker_update(state(SENT_TO_BROKER, bid=None), view("OPEN", 0, bid="B1"))
    # only the broker id is news
    assert plan is not None and plan.to_status is None and plan.broker_order_id == "B1"
    assert plan_broker_update(state(SENT_TO_BROKER), view("OPEN", 0)) is None


def test_more_fills_on_partial_is_another_partial_transition():
    plan = plan_broker_update(state(PARTIAL, 20, 99.0), view("OPEN", 40, 99.5))
    assert plan.to_status == PARTIAL and plan.filled_qty == 40 and plan.avg_price == 99.5


@pytest.mark.parametrize("reason,tag", [
    ("Insufficient margin", "BROKER_REJECTED:Insufficient margin"),
    ("  RMS:Margin   Exceeds ", "BROKER_REJECTED:RMS:Margin Exceeds"),
])
def test_rejected_is_failed_with_the_broker_reason(reason, tag):
    plan = plan_broker_update(state(SENT_TO_BROKER), view("REJECTED", reason=reason))
    assert plan.to_status == FAILED
    assert plan.tag == tag


def test_rejected_without_reason_still_has_a_broker_rejected_tag():
    plan = plan_broker_update(state(SENT_TO_BROKER), view("REJECTED"))
    assert plan.to_status == FAILED and plan.tag.startswith("BROKER_REJECTED:") and len(plan.tag) > 16


@pytest.mark.parametrize("spelling", ["CANCELED", "CANCELLED", "Canceled", "Cancelled"])
def test_canceled_spellings_fail_with_broker_canceled_and_keep_fills(spelling):
    plan = plan_broker_update(state(PARTIAL, 20, 99.0), view(spelling, 20, 99.0))
    assert plan.to_status == FAILED
    assert plan.tag.startswith("BROKER_CANCELED")
    assert plan.filled_qty == 20
    assert plan.avg_price == 99.0


def test_canceled_with_reason_keeps_prefix():
    plan = plan_broker_update(state(SENT_TO_BROKER), view("CANCELED", reason="user cancel"))
    assert plan.tag.startswith("BROKER_CANCELED")


def test_expired_is_failed_broker_expired():
    plan = plan_broker_update(state(SENT_TO_BROKER), view("EXPIRED"))
    assert plan.to_status == FAILED
    assert plan.tag.startswith("BROKER_EXPIRED")


def test_lost_in_flight_then_complete_is_executed():
    current = state(FAILED, 0, None, bid=None, tag="LOST_IN_FLIGHT")
    plan = plan_broker_update(current, view("COMPLETE", 65, 100.0, bid="B7"))
    assert plan.to_status == EXECUTED
    assert plan.filled_qty == 65
    assert plan.broker_order_id == "B7"


def test_failed_then_open_with_fills_is_partial():
    current = state(FAILED, 0, None, bid=None, tag="LOST_IN_FLIGHT")
    plan = plan_broker_update(current, view("OPEN", 10, 100.0))
    assert plan.to_status == PARTIAL and plan.filled_qty == 10


@pytest.mark.parametrize("status", ["OPEN", "REJECTED", "CANCELED", "EXPIRED"])
def test_failed_without_new_fills_stays_failed(status):
    current = state(FAILED, 0, None, tag="BROKER_REJECTED:x")
    plan = plan_broker_update(current, view(status, 0))
    assert plan is None or plan.to_status is None


@pytest.mark.parametrize("status", ["OPEN", "COMPLETE", "REJECTED", "CANCELED", "EXPIRED"])
def test_executed_is_terminal(status):
    current = state(EXECUTED, 65, 100.0)
    plan = plan_broker_update(current, view(status, 65, 100.0))
    assert plan is None or plan.to_status is None


def test_executed_never_loses_fills_to_a_stale_report():
    assert plan_broker_update(state(EXECUTED, 65, 100.0), view("OPEN", 20, 98.0)) is None


def test_rejected_for_a_created_order_is_allowed_failed():
    plan = plan_broker_update(state(CREATED, bid=None), view("REJECTED", reason="x"))
    assert plan.to_status == FAILED


# ---- idempotence and monotonicity ---------------------------------------------------------------------

REPORTS = [
    view("OPEN", 0), view("OPEN", 20, 99.0), view("OPEN", 40, 99.5), view("COMPLETE", 65, 100.0),
    view("CANCELED", 40, 99.5), view("REJECTED", 0, reason="no margin"), view("EXPIRED", 0),
    view("Cancelled", 20, 99.0),
]


STARTS = [state(SENT_TO_BROKER), state(PARTIAL, 20, 99.0), state(EXECUTED, 65, 100.0),
          state(FAILED, 0, tag="LOST_IN_FLIGHT")]


def _pairs():
    for start, report in itertools.product(STARTS, REPORTS):
        yield pytest.param(start, report, id=f"{start.status}-{report.status}-{report.filled_qty}")


@pytest.mark.parametrize("start,report", list(_pairs()))
def test_same_report_twice_second_is_none(start, report):
    once = apply(start, plan_broker_update(start, report))
    assert plan_broker_update(once, report) is None


@pytest.mark.parametrize("order", list(itertools.permutations(
    [view("OPEN", 20, 99.0), view("OPEN", 40, 99.5), view("COMPLETE", 65, 100.0)])))
def test_out_of_order_reports_end_executed_and_never_move_back(order):
    current = state(SENT_TO_BROKER)
    for report in order:
        nxt = apply(current, plan_broker_update(current, report))
        assert nxt.filled_qty >= current.filled_qty
        assert RANK[nxt.status] >= RANK[current.status]
        if current.status == EXECUTED:
            assert nxt == current
        current = nxt
    assert current.status == EXECUTED and current.filled_qty == 65 and current.avg_price == 100.0


def test_stale_smaller_fill_never_reduces_filled_qty():
    plan = plan_broker_update(state(PARTIAL, 40, 99.5), view("OPEN", 20, 99.0))
    assert plan is None


def test_cancel_after_partial_then_stale_open_keeps_failed_and_fills():
    current = apply(state(PARTIAL, 40, 99.5), plan_broker_update(state(PARTIAL, 40, 99.5), view("CANCELED", 40)))
    assert current.status == FAILED and current.filled_qty == 40
    assert plan_broker_update(current, view("OPEN", 20, 99.0)) is None


def test_broker_id_once_known_is_not_replaced():
    plan = plan_broker_update(state(SENT_TO_BROKER, bid="B1"), view("OPEN", 10, 1.0, bid="B2"))
    assert plan.broker_order_id == "B1"


@pytest.mark.parametrize("status", ["CANCELED", "EXPIRED", "REJECTED"])
def test_lost_in_flight_then_dead_at_broker_with_fills_keeps_fills_and_ends_failed(status):
    current = state(FAILED, 0, None, bid=None, tag="LOST_IN_FLIGHT")
    after = apply(current, plan_broker_update(current, view(status, 20, 99.0, bid="B7")))
    assert after.filled_qty == 20
    assert after.status == FAILED
