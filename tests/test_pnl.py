"""Pure tests of positions and P&L per strategy (actors/pnl.py)."""

from __future__ import annotations

import pytest

from actors.pnl import PositionPnl, build, strategy_totals

TODAY = "2026-11-30T03:45:00+00:00"  # 09:15 IST
YESTERDAY = "2026-11-27T09:00:00+00:00"


def fill(at, side, qty, price, strategy="S1", symbol="CE"):
    return ("fill", at, strategy, "NFO", symbol, "NRML", side, qty, price)


def test_average_is_the_weighted_cost_of_the_open_quantity():
    p = PositionPnl("S1", "NFO", "CE", "NRML")
    p.fill("BUY", 65, 100.0, today=True)
    p.fill("BUY", 65, 110.0, today=True)
    assert (p.net_qty, p.avg_price) == (130, pytest.approx(105.0))


def test_realized_accrues_on_each_reduction_against_the_average_and_resets_when_flat():
    p = PositionPnl("S1", "NFO", "CE", "NRML")
    p.fill("BUY", 130, 100.0, today=True)
    p.fill("SELL", 65, 110.0, today=True)
    assert (p.net_qty, p.avg_price, p.realized_pnl) == (65, 100.0, pytest.approx(650.0))
    p.fill("SELL", 65, 90.0, today=True)
    assert (p.net_qty, p.avg_price, p.realized_pnl) == (0, None, pytest.approx(0.0))


def test_a_reversal_opens_the_rest_at_the_fill_price():
    p = PositionPnl("S1", "NFO", "CE", "NRML")
    p.fill("SELL", 65, 100.0, today=True)
    p.fill("BUY", 130, 80.0, today=True)
    assert (p.net_qty, p.avg_price, p.realized_pnl) == (65, 80.0, pytest.approx(1300.0))


def test_unrealized_uses_the_last_price_and_the_multiplier():
    [p] = build([fill(TODAY, "SELL", 10, 100.0)], today_from=TODAY, last_prices={("NFO", "CE"): 95.0},
                multipliers={("NFO", "CE"): 2.0})
    assert p.unrealized_pnl == pytest.approx(100.0)


def test_a_carried_position_starts_the_day_at_its_carried_average_and_yesterday_is_not_realized_today():
    events = [fill(YESTERDAY, "BUY", 65, 100.0), fill(YESTERDAY, "SELL", 30, 120.0), fill(TODAY, "SELL", 35, 90.0)]
    [p] = build(events, today_from=TODAY)
    assert p.net_qty == 0 and p.realized_pnl == pytest.approx(-350.0)


def test_positions_closed_today_are_listed_and_older_flat_ones_are_not():
    events = [fill(YESTERDAY, "BUY", 65, 100.0, symbol="OLD"), fill(YESTERDAY, "SELL", 65, 100.0, symbol="OLD"),
              fill(TODAY, "BUY", 65, 100.0), fill(TODAY, "SELL", 65, 101.0)]
    rows = build(events, today_from=TODAY)
    assert [(p.symbol, p.net_qty) for p in rows] == [("CE", 0)]


def test_a_write_off_removes_quantity_without_pnl():
    events = [fill(TODAY, "BUY", 130, 100.0), ("write_off", TODAY + "x", "S1", "NFO", "CE", "NRML", -130)]
    [p] = build(events, today_from=TODAY)
    assert (p.net_qty, p.avg_price, p.realized_pnl) == (0, None, 0.0)


def test_strategy_totals_sum_positions_and_count_orders():
    rows = build([fill(TODAY, "BUY", 65, 100.0), fill(TODAY, "SELL", 65, 110.0, symbol="PE", strategy="S2")],
                 today_from=TODAY, last_prices={("NFO", "CE"): 101.0})
    totals = strategy_totals(rows, {"S1": {"orders": 2, "fills": 1}})
    assert totals[0] == {"strategy_name": "S1", "realized_pnl": 0.0, "unrealized_pnl": 65.0, "open_positions": 1,
                         "orders": 2, "fills": 1}
    assert totals[1]["unrealized_pnl"] is None  # S2's price is unknown: not pretended to be zero
