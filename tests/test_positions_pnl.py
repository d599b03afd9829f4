"""Positions and P&L per strategy through the real pipeline: GET /positions, GET /strategies, `oms positions`.

Prices are pinned at the paper exchange (set_ltp), so the fills and the P&L are known in advance: a BUY of 65 at
100 and a SELL of 65 at 112.50 realize 65 x 12.50 = 812.50, and the closed position stays listed with net 0.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import requests

from actors.dashboard.reads import today_from
from actors.risk import last_prices
from tests.conftest import SECRET, alert, set_ltp
from tests.symbols import NIFTY_CE, NIFTY_PE

TERMINAL = ("EXECUTED", "FAILED")
VENV_BIN = Path(sys.executable).parent


def trade(system, **fields) -> dict:
    status, body = system.inject_alert(alert(**fields))
    assert status == 202, body
    order = system.wait_for_status(body["orders"][0]["command_id"], TERMINAL, timeout=15)
    assert order["status"] == "EXECUTED", order
    return order


def get(system, path: str):
    reply = requests.get(f"{system.url}{path}", headers=system.operator_headers, timeout=5)
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_round_trip_realizes_the_difference_and_keeps_the_closed_row(make_system, paper, tmp_path):
    system = make_system(risk={"pnl_poll_interval_s": 0.3})
    set_ltp(paper, "NFO", NIFTY_CE, 100.0)
    bought = trade(system, strategy="S1", alert_id="in")
    assert bought["avg_price"] == 100.0

    # Open: the last price comes from risk's PositionBook, so unrealized follows the market.
    set_ltp(paper, "NFO", NIFTY_CE, 110.0)
    open_row = system.wait_until(
        lambda: (rows := get(system, "/positions")) and rows[0]["last_price"] == 110.0 and rows[0], 15,
        "the last price 110 from the PositionBook")
    assert open_row == {"strategy_name": "S1", "exchange": "NFO", "symbol": NIFTY_CE, "product": "NRML",
                        "net_qty": 65, "avg_price": 100.0, "last_price": 110.0, "realized_pnl": 0.0,
                        "unrealized_pnl": 650.0}

    set_ltp(paper, "NFO", NIFTY_CE, 112.5)
    sold = trade(system, strategy="S1", execution_type="EXIT", alert_id="out", direction="SELL")
    assert sold["avg_price"] == 112.5

    rows = get(system, "/positions")
    assert len(rows) == 1
    closed = rows[0]
    assert (closed["strategy_name"], closed["symbol"], closed["net_qty"]) == ("S1", NIFTY_CE, 0)
    assert closed["realized_pnl"] == 812.5 and closed["unrealized_pnl"] == 0.0 and closed["avg_price"] is None

    strategies = get(system, "/strategies")
    assert strategies == [{"strategy_name": "S1", "realized_pnl": 812.5, "unrealized_pnl": 0.0,
                           "open_positions": 0, "orders": 2, "fills": 2}]

    # `oms positions` prints the same from the running service.
    config = tmp_path / "cli.toml"
    config.write_text(f'[service]\ndata_dir = "{system.data_dir}"\nport = {system.port}\n', encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "runtime.cli", "positions", "--config", str(config)],
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": str(VENV_BIN) + ":/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert " IST " in done.stdout.splitlines()[0]
    line = next(text for text in done.stdout.splitlines() if NIFTY_CE in text)
    assert line.split()[:5] == ["S1", "NFO", NIFTY_CE, "NRML", "0"] and "812.50" in line
    assert done.stderr == ""


def test_two_strategies_are_kept_apart(make_system, paper):
    system = make_system()
    set_ltp(paper, "NFO", NIFTY_CE, 100.0)
    set_ltp(paper, "NFO", NIFTY_PE, 50.0)
    trade(system, strategy="A", alert_id="a-in")
    trade(system, strategy="B", alert_id="b-in", tradingsymbol=NIFTY_PE, direction="SELL", qty=130)
    set_ltp(paper, "NFO", NIFTY_PE, 40.0)
    trade(system, strategy="B", alert_id="b-out", execution_type="EXIT", tradingsymbol=NIFTY_PE,
          direction="BUY", qty=65)  # buys back half of the short
    rows = {(r["strategy_name"], r["symbol"]): r for r in get(system, "/positions")}
    assert set(rows) == {("A", NIFTY_CE), ("B", NIFTY_PE)}
    assert (rows[("A", NIFTY_CE)]["net_qty"], rows[("A", NIFTY_CE)]["realized_pnl"]) == (65, 0.0)
    short = rows[("B", NIFTY_PE)]
    assert (short["net_qty"], short["avg_price"], short["realized_pnl"]) == (-65, 50.0, 650.0)
    totals = {t["strategy_name"]: t for t in get(system, "/strategies")}
    assert (totals["A"]["open_positions"], totals["A"]["orders"], totals["A"]["fills"]) == (1, 1, 1)
    assert (totals["B"]["realized_pnl"], totals["B"]["orders"], totals["B"]["fills"]) == (650.0, 2, 2)


def test_oms_positions_without_the_service_reads_the_database(make_system, paper, tmp_path):
    system = make_system()
    set_ltp(paper, "NFO", NIFTY_CE, 100.0)
    trade(system, strategy="S1", alert_id="in")
    data_dir = system.data_dir
    system.stop()
    config = tmp_path / "down.toml"
    config.write_text(f'[service]\ndata_dir = "{data_dir}"\nport = 1\n', encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "runtime.cli", "positions", "--config", str(config)],
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": str(VENV_BIN) + ":/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    line = next(text for text in done.stdout.splitlines() if NIFTY_CE in text)
    assert line.split()[:7] == ["S1", "NFO", NIFTY_CE, "NRML", "65", "100.00", "-"]
    assert "last prices unknown" in done.stderr


def test_last_prices_take_the_multiplier_from_mult_and_prcftr():
    reply = last_prices([{"exch": "MCX", "tsym": "CRUDEOIL", "lp": 6000.0, "mult": 100.0, "prcftr": 1.0},
                         {"exch": "NFO", "tsym": NIFTY_CE, "lp": None, "mult": None, "prcftr": None},
                         {"exch": None, "tsym": None}])
    last, mult = reply.maps()
    assert last == {("MCX", "CRUDEOIL"): 6000.0}
    assert mult == {("MCX", "CRUDEOIL"): 100.0, ("NFO", NIFTY_CE): 1.0}


def test_today_starts_at_ist_midnight():
    # 2026-11-30 20:00 UTC is 01:30 IST on 1 December: the day began at 18:30 UTC.
    assert today_from(datetime(2026, 11, 30, 20, 0, tzinfo=UTC)) == "2026-11-30T18:30:00.000000+00:00"
    assert today_from(datetime(2026, 11, 30, 18, 0, tzinfo=UTC)) == "2026-11-29T18:30:00.000000+00:00"
