"""Pure tests of RiskBook and positions_pnl (step 2A)."""

from __future__ import annotations

import pytest

from actors.risk import ACTIVE, HALTED, REDUCING, RiskBook, positions_pnl
from messages.orders import OrderSnapshot

NOW = "2026-01-01T09:15:00.000000+00:00"


def order(execution="ENTRY") -> OrderSnapshot:
    return OrderSnapshot(
        command_id="cmd1", alert_id="a1", client_id="C1", source="webhook", strategy_name="S1",
        execution_type=execution, exchange="NFO", symbol="NIFTY", side="BUY", quantity=65, product="NRML",
        order_type="MARKET", price=0.0, trigger_price=None, status="CREATED", tag=None, broker_order_id=None,
        filled_qty=0, avg_price=None, created_at=NOW, updated_at=NOW)


# ---- positions_pnl ------------------------------------------------------------------------------------

def test_pnl_is_rpnl_plus_urmtom_over_non_cnc_rows():
    rows = [
        {"prd": "M", "rpnl": 100.0, "urmtom": -250.5},
        {"prd": "I", "rpnl": "-40", "urmtom": "10.5"},
        {"prd": "C", "rpnl": 10000, "urmtom": 5000},
        {"prd": "CNC", "rpnl": 7, "urmtom": 7},
    ]
    assert positions_pnl(rows) == pytest.approx(100.0 - 250.5 - 40 + 10.5)


def test_pnl_treats_missing_and_blank_values_as_zero():
    assert positions_pnl([{"prd": "M", "rpnl": None, "urmtom": ""}, {"prd": "I"}]) == 0.0
    assert positions_pnl([]) == 0.0


def test_pnl_excludes_lower_case_cnc():
    assert positions_pnl([{"prd": "c", "rpnl": 50, "urmtom": 0}, {"prd": "m", "rpnl": 5, "urmtom": 0}]) == 5.0


# ---- RiskBook ---------------------------------------------------------------------------------------

def test_active_book_without_limit_passes_entries_and_exits():
    book = RiskBook()
    assert book.check(order("ENTRY")) is None
    assert book.check(order("EXIT")) is None


@pytest.mark.parametrize("state", [HALTED, REDUCING])
def test_exit_is_never_blocked(state):
    book = RiskBook(max_daily_loss=1000, state=state, reason="KILL_SWITCH", pnl=-1_000_000)
    assert book.check(order("EXIT")) is None


def test_halted_blocks_entry_with_its_reason():
    assert RiskBook(state=HALTED, reason="KILL_SWITCH").check(order()) == "KILL_SWITCH"
    assert RiskBook(state=HALTED).check(order()) == "KILL_SWITCH"
    assert RiskBook(state=HALTED, reason="DAILY_LOSS_HIT").check(order()) == "DAILY_LOSS_HIT"


def test_reducing_blocks_entry():
    reason = RiskBook(state=REDUCING).check(order())
    assert reason and reason == reason.upper() and " " not in reason


@pytest.mark.parametrize("pnl,blocked", [(-999.99, False), (-1000.0, True), (-1000.01, True), (500.0, False)])
def test_daily_loss_is_hit_at_pnl_at_or_below_minus_max(pnl, blocked):
    book = RiskBook(max_daily_loss=1000)
    book.on_positions([{"prd": "M", "rpnl": pnl, "urmtom": 0}], ok=True)
    assert book.loss_limit_hit() is blocked
    assert book.check(order()) == ("DAILY_LOSS_HIT" if blocked else None)


def test_breaching_read_halts_once_and_reports_the_breach():
    book = RiskBook(max_daily_loss=1000)
    assert book.on_positions([{"prd": "M", "rpnl": -600, "urmtom": -500}], ok=True) is True
    assert (book.state, book.reason) == (HALTED, "DAILY_LOSS_HIT")
    assert book.on_positions([{"prd": "M", "rpnl": -700, "urmtom": -500}], ok=True) is False  # already halted
    assert book.state == HALTED
    assert book.check(order()) == "DAILY_LOSS_HIT"
    assert book.check(order("EXIT")) is None


def test_zero_max_loss_means_no_limit():
    book = RiskBook(max_daily_loss=0)
    assert book.on_positions([{"prd": "M", "rpnl": -1e9, "urmtom": 0}], ok=True) is False
    assert book.check(order()) is None and book.state == ACTIVE


def test_a_failed_read_never_resets_pnl():
    book = RiskBook(max_daily_loss=1000)
    book.on_positions([{"prd": "M", "rpnl": -400, "urmtom": 0}], ok=True)
    assert book.on_positions([], ok=False) is False
    assert book.pnl == -400
    assert book.view()["pnl"] == -400 and book.view()["pnl_known"] is True


def test_a_failed_read_does_not_clear_a_breach():
    book = RiskBook(max_daily_loss=1000)
    book.on_positions([{"prd": "M", "rpnl": -1500, "urmtom": 0}], ok=True)
    book.on_positions([], ok=False)
    assert book.loss_limit_hit() and book.check(order()) == "DAILY_LOSS_HIT"


def test_pnl_unknown_until_first_good_read():
    book = RiskBook(max_daily_loss=1000)
    book.on_positions([], ok=False)
    assert book.pnl is None and book.view()["pnl_known"] is False
    assert book.check(order()) is None


def test_view_reports_state():
    book = RiskBook(max_daily_loss=500, state=HALTED, reason="KILL_SWITCH", pnl=-10.0)
    assert book.view() == {"state": HALTED, "reason": "KILL_SWITCH", "pnl": -10.0, "pnl_known": True,
                           "max_loss": 500}
