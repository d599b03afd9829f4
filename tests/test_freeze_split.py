"""Freeze-quantity split: a leg above the freeze quantity becomes child orders of whole lots, each its own row.

Pure arithmetic and the store's one-transaction split are tested directly; the integration tests run the whole
service against the real paper exchange (which refuses MKT, so the children also go out market-protected).
"""

from __future__ import annotations

import pytest

from actors.instruments import FREEZE_QTY, LOT_SIZES, freeze_qty, freeze_table, lot_size_fallback
from actors.guard import split_quantities
from actors.store import OrderStore, split_family
from messages.broker import GetReader
from messages.commands import AmendExitLeg, InstrumentQuery, RegisterAlert, RiskCleared, SplitLeg, TransitionOrder
from messages.control import GetLedger
from messages.orders import NewOrder
from runtime.config import ConfigError, config_from_dict
from runtime.paper import engine as paper_engine
from storage.db import close_database, open_database
from storage.models import Order, OrderEvent
from tests.conftest import alert, paper_orders
from tests import symbols as sym
from tests.symbols import NIFTY_CE, NIFTY_FUT, NIFTY_PE

SYM = NIFTY_CE
TERMINAL = ("EXECUTED", "FAILED")


# ---- arithmetic ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("qty,freeze,lot,chunks", [
    (4000, 1800, 65, (1755, 1755, 490)),  # 27 lots of 65 = 1755 <= 1800
    (3510, 1800, 65, (1755, 1755)),
    (4030, 1800, 65, (1755, 1755, 520)),  # 62 lots: every chunk whole lots
    (1800, 1800, 65, (1800,)),  # at the freeze quantity: not split
    (65, 1800, 65, (65,)),
    (2700, 900, 30, (900, 900, 900)),  # BANKNIFTY: the freeze quantity is itself whole lots
    (2701, 900, 30, (900, 900, 900, 1)),
    (5000, 1800, None, (1800, 1800, 1400)),  # lot unknown: chunks of the freeze quantity
    (5000, 1800, 2000, (1800, 1800, 1400)),  # a lot above the freeze quantity (misconfigured)
    (5000, None, 65, (5000,)),  # no freeze quantity: never split
    (5000, 0, 65, (5000,)),
])
def test_split_quantities(qty, freeze, lot, chunks):
    got = split_quantities(qty, freeze, lot)
    assert got == chunks
    assert sum(got) == qty and all(0 < c <= max(freeze or qty, qty if not freeze else freeze) for c in got)


def test_freeze_quantities_by_underlying_and_overrides():
    table = freeze_table()
    assert freeze_qty("NFO", NIFTY_CE, table) == 1800
    assert freeze_qty("NFO", NIFTY_FUT, table) == 1800
    assert freeze_qty("NFO", sym.option("BANKNIFTY", "P", 52000), table) == 900
    assert freeze_qty("NFO", sym.option("FINNIFTY", "C", 24000), table) == 1800
    assert freeze_qty("NFO", sym.option("MIDCPNIFTY", "C", 12000), table) == 2800
    assert freeze_qty("BFO", "SENSEX2531175000CE", table) == 1000
    assert freeze_qty("BFO", "BANKEX25MAR60000PE", table) == 900
    assert freeze_qty("NSE", "INFY-EQ", table) is None  # equities have none
    assert freeze_qty("NSE", "NIFTY", table) is None
    assert freeze_qty("NFO", sym.future("RELIANCE"), table) is None  # stock derivatives: only when configured
    table = freeze_table({"reliance": 500, "NIFTY": 0, "BANKNIFTY": 600})
    assert freeze_qty("NFO", sym.future("RELIANCE"), table) == 500
    assert freeze_qty("NFO", NIFTY_CE, table) is None  # 0: never split
    assert freeze_qty("NFO", sym.option("BANKNIFTY", "P", 52000), table) == 600
    assert lot_size_fallback("NFO", NIFTY_CE) == 65 and lot_size_fallback("NSE", "INFY-EQ") is None


def test_built_in_tables_match_the_paper_exchange():
    paper = paper_engine._CONTRACTS  # underlying -> (lot, freeze)
    assert set(FREEZE_QTY) == set(paper) == set(LOT_SIZES)
    for name, (lot, freeze) in paper.items():
        assert (LOT_SIZES[name], FREEZE_QTY[name]) == (lot, freeze), name


def test_freeze_config_is_upper_cased_and_checked():
    cfg = config_from_dict({"broker": {"freeze_qty": {"nifty": 1200, "RELIANCE": 500}}}, environ={})
    assert cfg.broker.freeze_qty == {"NIFTY": 1200, "RELIANCE": 500}
    with pytest.raises(ConfigError, match="freeze_qty"):
        config_from_dict({"broker": {"freeze_qty": {"NIFTY": -1}}}, environ={})


# ---- the store: one transaction ------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path):
    db = open_database(tmp_path / "orders.db")
    try:
        yield OrderStore(db)
    finally:
        close_database(db)


def leg(command_id: str, qty: int, index: int, execution: str = "ENTRY", symbol: str = SYM) -> NewOrder:
    return NewOrder(command_id=command_id, alert_id="tv-split", client_id="C1", source="webhook",
                    strategy_name="S1", execution_type=execution, exchange="NFO", symbol=symbol, side="BUY",
                    quantity=qty, product="NRML", order_type="LIMIT", price=101.5, leg_index=index)


def register(store: OrderStore, *legs: NewOrder):
    return store.register_alert(RegisterAlert(alert_id="tv-split", source="webhook", strategy_name="S1",
                                              body="{}", legs=legs))


def test_split_keeps_the_first_chunk_and_inserts_linked_children(store):
    register(store, leg("p1", 4000, 0), leg("other", 65, 1, symbol=NIFTY_PE))
    result, changes = store.split_leg(SplitLeg(command_id="p1", quantities=(1755, 1755, 490)))
    assert result.applied and [o.quantity for o in result.orders] == [1755, 1755, 490]
    parent, *children = result.orders
    assert parent.command_id == "p1" and parent.parent_command_id is None
    assert Order.get(Order.command_id == "p1").quantity == 1755
    assert [c.leg_index for c in children] == [2, 3]  # after the alert's last leg, consecutive
    for child in children:
        row = Order.get(Order.command_id == child.command_id)
        assert row.parent_command_id == "p1" and row.status == "CREATED" and row.tag is None
        assert (row.alert_id, row.strategy_name, row.symbol, row.side, row.product, row.order_type, row.price,
                row.execution_type, row.exchange, row.client_id) == (
            "tv-split", "S1", SYM, "BUY", "NRML", "LIMIT", 101.5, "ENTRY", "NFO", "C1")
        assert row.command_id.startswith("oms") and len(row.command_id) == 20
        events = [(e.from_status, e.to_status, e.detail) for e in OrderEvent.select().where(
            OrderEvent.command_id == child.command_id)]
        assert events == [(None, "CREATED", "split from p1")]
    # the parent has no new event (its status did not change); one publication each
    assert [(c.order.command_id, c.from_status, c.to_status) for c in changes] == [
        ("p1", "CREATED", "CREATED"), *((c.command_id, None, "CREATED") for c in children)]
    assert Order.select().count() == 4

    again, changes = store.split_leg(SplitLeg(command_id="p1", quantities=(1755, 1755, 490)))
    assert (again.applied, again.reason, changes) == (False, "ALREADY_SPLIT", [])
    assert [o.command_id for o in again.orders] == ["p1", *(c.command_id for c in children)]
    assert Order.select().count() == 4
    assert [o.command_id for o in split_family("p1")] == ["p1", *(c.command_id for c in children)]
    amended = store.amend_exit_leg(AmendExitLeg(command_id="p1", side="SELL", quantity=4000, product="NRML"))
    assert (amended.applied, amended.reason) == (False, "ALREADY_SPLIT")
    assert Order.get(Order.command_id == "p1").quantity == 1755


def test_split_refuses_what_does_not_add_up_or_is_not_created(store):
    register(store, leg("p1", 4000, 0), leg("p2", 4000, 1))
    for quantities in ((1755, 1755), (4000,), (1800, 2200, 0)):
        result, changes = store.split_leg(SplitLeg(command_id="p1", quantities=quantities))
        assert (result.applied, changes) == (False, [])
        assert result.reason == "QUANTITIES_DO_NOT_ADD_UP"
    store.transition(TransitionOrder(command_id="p2", to_status="SENT_TO_BROKER", expect_from=("CREATED",)))
    result, _ = store.split_leg(SplitLeg(command_id="p2", quantities=(1755, 1755, 490)))
    assert (result.applied, result.reason) == (False, "STATUS_IS_SENT_TO_BROKER")
    result, _ = store.split_leg(SplitLeg(command_id="nope", quantities=(1, 1)))
    assert (result.applied, result.reason) == (False, "UNKNOWN_ORDER")
    assert Order.select().count() == 2 and {o.quantity for o in Order.select()} == {4000}


# ---- against the paper exchange ------------------------------------------------------------------------

def family(system, alert_id: str) -> list[dict]:
    return sorted((o for o in system.orders() if o["alert_id"] == alert_id), key=lambda o: o["leg_index"])


def check_split(system, exchange, alert_id: str, side: str, parent_cid: str) -> list[dict]:
    orders = system.wait_until(lambda: (f := family(system, alert_id)) and len(f) == 3 and f, 10,
                               f"the children of {alert_id}")
    for o in orders:
        system.wait_for_status(o["command_id"], TERMINAL, timeout=15)
    orders = family(system, alert_id)
    assert [o["quantity"] for o in orders] == [1755, 1755, 490]
    assert [o["status"] for o in orders] == ["EXECUTED"] * 3, [(o["status"], o["tag"]) for o in orders]
    assert [o["filled_qty"] for o in orders] == [1755, 1755, 490]
    assert orders[0]["command_id"] == parent_cid and orders[0]["parent_command_id"] is None
    assert [o["parent_command_id"] for o in orders[1:]] == [parent_cid, parent_cid]
    assert {o["side"] for o in orders} == {side}
    assert len({o["broker_order_id"] for o in orders}) == 3  # each its own broker order
    at_exchange = {o["remarks"]: o for o in paper_orders(exchange)}
    for o in orders:
        sent = at_exchange[o["command_id"]]
        assert (sent["norenordno"], int(sent["qty"]), sent["status"], sent["prctyp"]) == (
            o["broker_order_id"], o["quantity"], "COMPLETE", "LMT")
        steps = [e["to_status"] for e in system.order(o["command_id"])["events"]]
        # 1755 fills in two slices at the paper exchange (fill_slice_qty 1000): a PARTIAL may show in between
        assert steps[:2] == ["CREATED", "SENT_TO_BROKER"] and steps[-1] == "EXECUTED", steps
    return orders


def test_entry_and_exit_above_the_freeze_quantity_are_split(make_system, paper_factory):
    exchange = paper_factory(reject_market_orders=True)
    system = make_system(exchange)
    status, body = system.inject_alert(alert(alert_id="big-entry", qty=4000))
    assert status == 202 and len(body["orders"]) == 1, body
    check_split(system, exchange, "big-entry", "BUY", body["orders"][0]["command_id"])
    assert system.registry.ask("guard", GetLedger())["positions"] == {f"S1|NFO|{SYM}|NRML": 4000}

    # The EXIT's quantity (all held) is known only in the guard: it is split there, after resolution.
    status, body = system.inject_alert(alert(alert_id="big-exit", execution_type="EXIT", qty=10000))
    assert status == 202 and body["orders"][0]["status"] == "CREATED", body
    check_split(system, exchange, "big-exit", "SELL", body["orders"][0]["command_id"])
    system.wait_until(lambda: not system.registry.ask("guard", GetLedger())["positions"], 5, "a flat ledger")
    positions = [p for p in exchange_positions(system) if p["tsym"] == SYM]
    assert positions and all(int(p["netqty"]) == 0 for p in positions)


def test_a_configured_freeze_quantity_splits_in_whole_lots_the_exchange_accepts(make_system, paper_factory):
    # The exchange checks lots, ticks and its own freeze quantity (1800); ours is lowered to 1000 -> 975 (15 lots).
    exchange = paper_factory(reject_market_orders=True, enforce_lot_tick=True)
    system = make_system(exchange, broker={"freeze_qty": {"NIFTY": 1000}})
    status, body = system.inject_alert(alert(alert_id="lots", qty=2600))  # 40 lots
    assert status == 202, body
    orders = system.wait_until(lambda: (f := family(system, "lots")) and len(f) == 3 and f, 10, "3 orders")
    for o in orders:
        system.wait_for_status(o["command_id"], TERMINAL, timeout=15)
    orders = family(system, "lots")
    assert [(o["quantity"], o["status"]) for o in orders] == [(975, "EXECUTED"), (975, "EXECUTED"),
                                                               (650, "EXECUTED")], orders


def exchange_positions(system) -> list[dict]:
    """The broker's PositionBook, read through the service's own session (a forked reader)."""
    reader = system.registry.ask("broker", GetReader(), timeout=5)
    try:
        return [p.model_dump() for p in reader.position_book()]
    finally:
        reader.close()


def test_a_retried_check_after_the_split_sends_each_child_once(make_system, paper_factory):
    """The guard died after the store had split the leg (the supervisor re-delivers the same RiskCleared, with
    the leg's quantity from before the split): the retry sends the parent and children as they are, once."""
    exchange = paper_factory(reject_market_orders=True)
    system = make_system(exchange)
    info = system.registry.ask("broker", InstrumentQuery(exchange="NFO", symbol=SYM), timeout=5)
    assert (info.found, info.kind, info.lot_size, info.tick_size) == (True, "option", 65, 0.05) and info.token

    def register_and_split(alert_id: str, execution: str, side: str, qty: int, resolved=None):
        cid = f"oms{alert_id.replace('-', '')}".ljust(20, "0")[:20]
        leg = NewOrder(command_id=cid, alert_id=alert_id, client_id="paper", source="webhook", strategy_name="S1",
                       execution_type=execution, exchange="NFO", symbol=SYM, side=side, quantity=qty,
                       product="NRML", order_type="MARKET")
        result = system.registry.ask("store", RegisterAlert(alert_id=alert_id, source="webhook", strategy_name="S1",
                                                            legs=(leg,), announce=False), timeout=5)
        stale = result.orders[0]  # what the first (crashed) check was given
        if resolved is not None:  # the first check had resolved the EXIT before it split it
            system.registry.ask("store", AmendExitLeg(command_id=cid, side=resolved[0], quantity=resolved[1],
                                                      product="NRML"), timeout=5)
        split = system.registry.ask("store", SplitLeg(command_id=cid, quantities=(1755, 1755, 490)), timeout=5)
        assert split.applied
        system.inject("guard", RiskCleared(orders=(stale,)))
        return cid

    entry = register_and_split("retry-entry", "ENTRY", "BUY", 4000)
    check_split(system, exchange, "retry-entry", "BUY", entry)
    system.wait_until(lambda: system.registry.ask("guard", GetLedger())["positions"] == {f"S1|NFO|{SYM}|NRML": 4000},
                      5, "the ledger to hold 4000")
    exit_cid = register_and_split("retry-exit", "EXIT", "BUY", 10000, resolved=("SELL", 4000))
    check_split(system, exchange, "retry-exit", "SELL", exit_cid)
    system.wait_until(lambda: not system.registry.ask("guard", GetLedger())["positions"], 5, "a flat ledger")
    assert len(paper_orders(exchange)) == 6  # nothing sent twice
