"""Pure tests of GuardBook: position guard (2B), duplicate guard (2C), EXIT resolution and the fill ledger."""

from __future__ import annotations

import itertools

import pytest

from actors.guard import GuardBook
from messages.orders import OrderChanged, OrderSnapshot
from tests.symbols import NIFTY_CE

_ids = itertools.count(1)
NOW = "2026-01-01T09:15:00.000000+00:00"


def snap(strategy="S1", symbol=NIFTY_CE, side="BUY", qty=65, execution="ENTRY", alert="a1",
         exchange="NFO", product="NRML", status="CREATED", filled=0, command_id=None) -> OrderSnapshot:
    return OrderSnapshot(
        command_id=command_id or f"cmd{next(_ids)}", alert_id=alert, client_id="C1", source="webhook",
        strategy_name=strategy, execution_type=execution, exchange=exchange, symbol=symbol, side=side,
        quantity=qty, product=product, order_type="MARKET", price=0.0, trigger_price=None, status=status,
        tag=None, broker_order_id=None, filled_qty=filled, avg_price=None, created_at=NOW, updated_at=NOW)


def changed(order: OrderSnapshot, to_status: str, filled: int, prev: int, from_status="SENT_TO_BROKER"):
    new = order.model_copy(update={"status": to_status, "filled_qty": filled})
    return OrderChanged(order=new, from_status=from_status, to_status=to_status, prev_filled_qty=prev)


def hold(book: GuardBook, **kw) -> OrderSnapshot:
    """Give a strategy a position through an executed order, the way the actor does."""
    order = snap(**kw)
    book.admit(order)
    book.on_change(changed(order, "EXECUTED", order.quantity, 0))
    return order


# ---- ENTRY ------------------------------------------------------------------------------------------

def test_entry_with_no_positions_passes_unchanged():
    book = GuardBook()
    d = book.evaluate(snap(side="SELL", qty=30, product="MIS"))
    assert d.tag is None
    assert (d.side, d.quantity, d.product) == ("SELL", 30, "MIS")


def test_entry_when_strategy_holds_a_position_is_blocked():
    book = GuardBook()
    hold(book, strategy="S1", symbol="BANKNIFTY")
    later = "a-later"
    assert book.evaluate(snap(strategy="S1", symbol="NIFTY", alert=later)).tag == "GUARD_BLOCKED:STRATEGY_HAS_POSITION"
    assert book.evaluate(snap(strategy="S1", symbol="BANKNIFTY", alert=later)).tag == \
        "GUARD_BLOCKED:STRATEGY_HAS_POSITION"


def test_legs_of_the_alert_that_opened_the_position_are_not_blocked_by_it():
    """Recovery re-checks the unsent legs of a multi-leg alert whose first leg already filled."""
    book = GuardBook()
    hold(book, strategy="S1", symbol="BANKNIFTY")  # built by alert a1 (snap's default)
    assert book.evaluate(snap(strategy="S1", symbol="NIFTY", alert="a1")).tag is None


def test_entry_of_another_strategy_is_not_blocked_by_that_position():
    book = GuardBook()
    hold(book, strategy="S1", symbol="BANKNIFTY")
    assert book.evaluate(snap(strategy="S2", symbol="NIFTY")).tag is None


def test_opposite_direction_on_a_symbol_another_strategy_holds_is_blocked():
    book = GuardBook()
    hold(book, strategy="S1", symbol="NIFTY", side="BUY")
    assert book.evaluate(snap(strategy="S2", symbol="NIFTY", side="SELL")).tag == \
        "GUARD_BLOCKED:CROSS_STRATEGY_CONFLICT"


def test_opposite_direction_against_another_strategys_short_is_blocked():
    book = GuardBook()
    hold(book, strategy="S1", symbol="NIFTY", side="SELL")
    assert book.evaluate(snap(strategy="S2", symbol="NIFTY", side="BUY")).tag == \
        "GUARD_BLOCKED:CROSS_STRATEGY_CONFLICT"


def test_same_direction_on_a_symbol_another_strategy_holds_is_allowed():
    book = GuardBook()
    hold(book, strategy="S1", symbol="NIFTY", side="BUY")
    d = book.evaluate(snap(strategy="S2", symbol="NIFTY", side="BUY"))
    assert d.tag is None and d.side == "BUY"


def test_opposite_direction_on_another_exchange_is_not_a_conflict():
    book = GuardBook()
    hold(book, strategy="S1", symbol="RELIANCE", exchange="NSE", side="BUY")
    assert book.evaluate(snap(strategy="S2", symbol="RELIANCE", exchange="BSE", side="SELL")).tag is None


def test_in_flight_order_of_same_strategy_and_symbol_from_another_alert_blocks():
    book = GuardBook()
    book.admit(snap(strategy="S1", symbol="NIFTY", alert="a1"))
    assert book.evaluate(snap(strategy="S1", symbol="NIFTY", alert="a2")).tag == \
        "DUPLICATE_BLOCKED:OPEN_ORDER_EXISTS"


def test_legs_of_the_same_alert_do_not_block_each_other():
    book = GuardBook()
    book.admit(snap(strategy="S1", symbol="NIFTY", alert="a1", side="BUY"))
    d = book.evaluate(snap(strategy="S1", symbol="NIFTY", alert="a1", side="SELL"))
    assert d.tag is None


def test_in_flight_of_other_strategy_or_symbol_does_not_block():
    book = GuardBook()
    book.admit(snap(strategy="S1", symbol="NIFTY", alert="a1"))
    assert book.evaluate(snap(strategy="S2", symbol="NIFTY", alert="a2")).tag is None
    assert book.evaluate(snap(strategy="S1", symbol="BANKNIFTY", alert="a2")).tag is None


@pytest.mark.parametrize("terminal", ["EXECUTED", "FAILED"])
def test_terminal_change_removes_from_in_flight(terminal):
    book = GuardBook()
    first = snap(strategy="S1", symbol="NIFTY", alert="a1")
    book.admit(first)
    book.on_change(changed(first, terminal, 0, 0))
    assert first.command_id not in book.in_flight
    assert book.evaluate(snap(strategy="S1", symbol="NIFTY", alert="a2")).tag is None


@pytest.mark.parametrize("status", ["SENT_TO_BROKER", "PARTIAL"])
def test_non_terminal_change_keeps_in_flight(status):
    book = GuardBook()
    first = snap(strategy="S1", symbol="NIFTY", alert="a1")
    book.admit(first)
    book.on_change(changed(first, status, 0, 0))
    assert first.command_id in book.in_flight


def test_fifty_identical_alerts_admit_exactly_one():
    book = GuardBook()
    sent = 0
    for n in range(50):
        order = snap(strategy="S1", symbol="NIFTY", alert=f"dup{n}")
        if book.evaluate(order).tag is None:
            book.admit(order)
            sent += 1
    assert sent == 1


# ---- EXIT -------------------------------------------------------------------------------------------

def test_exit_without_position_is_blocked():
    book = GuardBook()
    assert book.evaluate(snap(execution="EXIT")).tag == "GUARD_BLOCKED:NO_POSITION"


def test_exit_with_position_only_in_another_strategy_is_blocked():
    book = GuardBook()
    hold(book, strategy="S1", symbol="NIFTY")
    assert book.evaluate(snap(strategy="S2", symbol="NIFTY", execution="EXIT")).tag == \
        "GUARD_BLOCKED:NO_POSITION"


def test_exit_with_position_in_another_symbol_is_blocked():
    book = GuardBook()
    hold(book, strategy="S1", symbol="NIFTY")
    assert book.evaluate(snap(strategy="S1", symbol="BANKNIFTY", execution="EXIT")).tag == \
        "GUARD_BLOCKED:NO_POSITION"


def test_exit_of_long_sells_min_of_held_and_leg_qty_with_position_product():
    book = GuardBook()
    hold(book, strategy="S1", symbol="NIFTY", side="BUY", qty=65, product="MIS")
    d = book.evaluate(snap(strategy="S1", symbol="NIFTY", side="BUY", qty=100, execution="EXIT",
                           product="NRML", alert="x"))
    assert d.tag is None
    assert (d.side, d.quantity, d.product) == ("SELL", 65, "MIS")


def test_exit_smaller_than_position_takes_leg_qty():
    book = GuardBook()
    hold(book, strategy="S1", symbol="NIFTY", side="BUY", qty=130)
    d = book.evaluate(snap(strategy="S1", symbol="NIFTY", side="SELL", qty=65, execution="EXIT", alert="x"))
    assert (d.side, d.quantity) == ("SELL", 65)


def test_exit_of_short_buys():
    book = GuardBook()
    hold(book, strategy="S1", symbol="NIFTY", side="SELL", qty=75, product="NRML")
    d = book.evaluate(snap(strategy="S1", symbol="NIFTY", side="SELL", qty=75, execution="EXIT", alert="x"))
    assert (d.tag, d.side, d.quantity, d.product) == (None, "BUY", 75, "NRML")


def test_exit_with_open_order_of_another_alert_is_duplicate_blocked():
    book = GuardBook()
    hold(book, strategy="S1", symbol="NIFTY")
    book.admit(snap(strategy="S1", symbol="NIFTY", execution="EXIT", alert="x1", side="SELL"))
    assert book.evaluate(snap(strategy="S1", symbol="NIFTY", execution="EXIT", alert="x2")).tag == \
        "DUPLICATE_BLOCKED:OPEN_ORDER_EXISTS"


def test_exit_after_position_is_flat_is_blocked():
    book = GuardBook()
    hold(book, strategy="S1", symbol="NIFTY", side="BUY", qty=65)
    hold(book, strategy="S1", symbol="NIFTY", side="SELL", qty=65, execution="EXIT", alert="x")
    assert book.positions == {}
    assert book.evaluate(snap(strategy="S1", symbol="NIFTY", execution="EXIT", alert="y")).tag == \
        "GUARD_BLOCKED:NO_POSITION"
    # and a flat strategy may enter again
    assert book.evaluate(snap(strategy="S1", symbol="NIFTY", alert="z")).tag is None


# ---- the ledger -------------------------------------------------------------------------------------

def test_fill_deltas_build_the_ledger():
    book = GuardBook()
    order = snap(strategy="S1", symbol="NIFTY", side="BUY", qty=100)
    book.admit(order)
    book.on_change(changed(order, "PARTIAL", 20, 0))
    book.on_change(changed(order, "PARTIAL", 50, 20, from_status="PARTIAL"))
    book.on_change(changed(order, "PARTIAL", 50, 50, from_status="PARTIAL"))  # no new fill
    assert book.positions == {("S1", "NFO", "NIFTY", "NRML"): 50}
    book.on_change(changed(order, "EXECUTED", 100, 50, from_status="PARTIAL"))
    assert book.positions == {("S1", "NFO", "NIFTY", "NRML"): 100}


def test_sell_fills_are_negative_and_canceled_fills_count():
    book = GuardBook()
    order = snap(strategy="S1", symbol="NIFTY", side="SELL", qty=100)
    book.admit(order)
    book.on_change(changed(order, "FAILED", 40, 0))
    assert book.positions == {("S1", "NFO", "NIFTY", "NRML"): -40}
    assert order.command_id not in book.in_flight


def test_registration_change_without_fills_leaves_ledger_empty():
    book = GuardBook()
    order = snap()
    book.on_change(OrderChanged(order=order, from_status=None, to_status="CREATED"))
    assert book.positions == {}


def test_exit_cancels_the_strategys_resting_entries_and_exits_what_is_held():
    book = GuardBook()
    resting = snap(strategy="S1", alert="a-entry", command_id="entry1")
    book.admit(resting)
    decision = book.evaluate(snap(strategy="S1", execution="EXIT", alert="a-exit"))
    assert decision.tag == "GUARD_BLOCKED:NO_POSITION" and decision.cancel == ("entry1",)
    book.apply_fill(resting, 30)  # partly filled meanwhile
    decision = book.evaluate(snap(strategy="S1", execution="EXIT", alert="a-exit2"))
    assert decision.tag is None and (decision.side, decision.quantity) == ("SELL", 30)
    assert decision.cancel == ("entry1",)


def test_exit_does_not_cancel_other_strategies_or_symbols_and_an_exit_in_flight_is_a_duplicate():
    book = GuardBook()
    book.admit(snap(strategy="S2", alert="x", command_id="other-strategy"))
    book.admit(snap(strategy="S1", symbol="OTHER", alert="y", command_id="other-symbol"))
    assert book.evaluate(snap(strategy="S1", execution="EXIT", alert="z")).cancel == ()
    hold(book, strategy="S1")
    book.admit(snap(strategy="S1", execution="EXIT", side="SELL", alert="first-exit", command_id="exit1"))
    assert book.evaluate(snap(strategy="S1", execution="EXIT", alert="second-exit")).tag == \
        "DUPLICATE_BLOCKED:OPEN_ORDER_EXISTS"


def test_indexes_follow_the_ledger_and_empty_buckets_are_dropped():
    """The per-strategy / per-instrument / per-book indexes give the same answers as scanning, and do not grow
    with closed positions or settled orders (a day of thousands of orders keeps the checks O(1))."""
    book = GuardBook()
    for k in range(200):
        order = hold(book, strategy=f"S{k}", symbol="NIFTY", alert=f"a{k}")
        closing = snap(strategy=f"S{k}", symbol="NIFTY", side="SELL", execution="EXIT", alert=f"x{k}")
        book.admit(closing)
        book.on_change(changed(closing, "EXECUTED", order.quantity, 0))
    assert book.positions == {}
    assert not book._by_strategy and not book._by_instrument and not book._in_flight_by_book
    # With one long position left, another strategy's SELL entry on the instrument conflicts; a BUY does not.
    hold(book, strategy="S7", symbol="NIFTY", alert="b1")
    assert book.evaluate(snap(strategy="S8", symbol="NIFTY", side="SELL", alert="b2")).tag == \
        "GUARD_BLOCKED:CROSS_STRATEGY_CONFLICT"
    assert book.evaluate(snap(strategy="S8", symbol="NIFTY", side="BUY", alert="b3")).tag is None
