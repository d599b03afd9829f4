"""Pure tests of positions_pnl: the day's P&L from PositionBook rows (step 2A)."""

from __future__ import annotations

import pytest

from actors.risk import positions_pnl

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
