"""Pure tests of the guard's alert-level plans and of exits sized by the broker's truth (actors/guard_book.py)."""

from __future__ import annotations

import itertools

from actors.guard_book import BrokerPositions, GuardBook, plan_entry, plan_exit
from messages.orders import OrderChanged, OrderSnapshot

_ids = itertools.count(1)
NOW = "2026-01-01T09:15:00.000000+00:00"
CE, PE, CE_WING = "NIFTY29DEC26C25700", "NIFTY29DEC26P25700", "NIFTY29DEC26C26200"


def snap(symbol=CE, side="BUY", qty=65, execution="ENTRY", alert="a1", strategy="S1", status="CREATED",
         filled=0, tag=None, index=0) -> OrderSnapshot:
    return OrderSnapshot(
        command_id=f"cmd{next(_ids)}", alert_id=alert, alert_key=alert, client_id="C1", source="webhook",
        strategy_name=strategy, execution_type=execution, exchange="NFO", symbol=symbol, side=side, quantity=qty,
        product="NRML", order_type="MARKET", price=0.0, trigger_price=None, status=status, tag=tag,
        broker_order_id=None, filled_qty=filled, avg_price=None, created_at=NOW, updated_at=NOW, leg_index=index)


def hold(book: GuardBook, **kw) -> OrderSnapshot:
    order = snap(alert="entry", **kw)
    book.admit(order)
    done = order.model_copy(update={"status": "EXECUTED", "filled_qty": order.quantity})
    book.on_change(OrderChanged(order=done, from_status="SENT_TO_BROKER", to_status="EXECUTED"))
    return order


def broker(**net) -> BrokerPositions:
    """net: symbol -> netqty (NRML)."""
    return BrokerPositions.from_rows([{"exch": "NFO", "tsym": s, "prd": "M", "netqty": q} for s, q in net.items()],
                                     read_at=0.0)


# ---- exits sized by the broker's truth -------------------------------------------------------------------

def test_exit_is_capped_at_what_the_broker_holds_and_the_rest_written_off():
    book = GuardBook()
    hold(book, qty=130)
    d = book.evaluate(snap(side="SELL", qty=130, execution="EXIT", alert="x"), broker(**{CE: 65}))
    assert (d.tag, d.side, d.quantity, d.write_off) == (None, "SELL", 65, 65)


def test_exit_when_the_broker_is_flat_is_blocked_and_written_off():
    book = GuardBook()
    hold(book, qty=130)
    d = book.evaluate(snap(side="SELL", qty=130, execution="EXIT", alert="x"), broker())
    assert (d.tag, d.write_off) == ("GUARD_BLOCKED:BROKER_FLAT", 130)


def test_exit_never_crosses_zero_counting_our_unfilled_exits():
    book = GuardBook()
    hold(book, qty=65, strategy="S1")
    hold(book, qty=65, strategy="S2")
    first = snap(side="SELL", qty=65, execution="EXIT", alert="x1", strategy="S1")
    d1 = book.evaluate(first, broker(**{CE: 65}))
    assert (d1.quantity, d1.write_off) == (65, 0)
    book.admit(first)  # sent, not filled yet
    d2 = book.evaluate(snap(side="SELL", qty=65, execution="EXIT", alert="x2", strategy="S2"), broker(**{CE: 65}))
    assert (d2.tag, d2.write_off) == ("GUARD_BLOCKED:BROKER_FLAT", 65)


def test_our_fills_since_the_read_count():
    book = GuardBook()
    hold(book, qty=130)
    truth = broker(**{CE: 130})
    sold = snap(side="SELL", qty=65, execution="EXIT", alert="x1", status="EXECUTED", filled=65)
    truth.apply_fill(sold, 65)  # filled after the read
    d = book.evaluate(snap(side="SELL", qty=130, execution="EXIT", alert="x2"), truth)
    assert (d.quantity, d.write_off) == (65, 65)


def test_a_short_is_bought_back_only_up_to_the_brokers_short():
    book = GuardBook()
    hold(book, side="SELL", qty=130)
    d = book.evaluate(snap(side="BUY", qty=130, execution="EXIT", alert="x"), broker(**{CE: -65}))
    assert (d.side, d.quantity, d.write_off) == ("BUY", 65, 65)
    d = book.evaluate(snap(side="BUY", qty=130, execution="EXIT", alert="x"), broker(**{CE: 65}))  # long there
    assert d.tag == "GUARD_BLOCKED:BROKER_FLAT"


def test_no_broker_read_sizes_by_the_ledger_and_says_so():
    book = GuardBook()
    hold(book, qty=130)
    d = book.evaluate(snap(side="SELL", qty=130, execution="EXIT", alert="x"), None)
    assert (d.quantity, d.write_off) == (130, 0) and "broker position unknown" in d.note


# ---- plans -----------------------------------------------------------------------------------------------

def test_entry_plan_blocks_every_leg_when_one_is_blocked():
    book = GuardBook()
    hold(book, qty=65, strategy="S1")  # long CE
    legs = [snap(side="SELL", strategy="S2", alert="b"), snap(symbol=PE, side="SELL", strategy="S2", alert="b")]
    plan = plan_entry(book, legs)
    assert plan.send == []
    assert plan.blocked == {legs[0].command_id: "GUARD_BLOCKED:CROSS_STRATEGY_CONFLICT",
                            legs[1].command_id: "GUARD_BLOCKED:OTHER_LEG_BLOCKED"}


def test_entry_plan_sends_buy_legs_first():
    legs = [snap(side="SELL", index=0), snap(symbol=CE_WING, side="BUY", index=1)]
    plan = plan_entry(GuardBook(), legs)
    assert [leg.command_id for leg, _ in plan.send] == [legs[1].command_id, legs[0].command_id]


def test_exit_plan_holds_wings_until_the_buy_backs_fill():
    book = GuardBook()
    hold(book, side="SELL")
    hold(book, symbol=CE_WING, side="BUY")
    wing, short = snap(symbol=CE_WING, side="SELL", execution="EXIT", alert="x"), snap(side="BUY", execution="EXIT",
                                                                                       alert="x")
    plan = plan_exit(book, [wing, short], broker(**{CE: -65, CE_WING: 65}))
    assert [leg.command_id for leg, _ in plan.send] == [short.command_id]
    assert plan.hold == [wing] and plan.wait_for == {short.command_id}


def test_exit_plan_refuses_wings_when_a_buy_back_failed_earlier():
    book = GuardBook()
    hold(book, symbol=CE_WING, side="BUY")
    wing = snap(symbol=CE_WING, side="SELL", execution="EXIT", alert="x")
    failed = snap(side="BUY", execution="EXIT", alert="x", status="FAILED", tag="BROKER_REJECTED:margin")
    plan = plan_exit(book, [wing], broker(**{CE_WING: 65}), siblings=[failed])
    assert plan.blocked == {wing.command_id: "GUARD_BLOCKED:OTHER_LEG_BLOCKED"}


def test_exit_plan_sends_wings_when_there_was_nothing_to_buy_back():
    book = GuardBook()
    hold(book, symbol=CE_WING, side="BUY")
    wing, short = snap(symbol=CE_WING, side="SELL", execution="EXIT", alert="x"), snap(side="BUY", execution="EXIT",
                                                                                       alert="x")
    plan = plan_exit(book, [wing, short], broker(**{CE_WING: 65}))
    assert plan.blocked == {short.command_id: "GUARD_BLOCKED:NO_POSITION"}
    assert [leg.command_id for leg, _ in plan.send] == [wing.command_id]
