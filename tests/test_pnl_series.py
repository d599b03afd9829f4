"""The day's P&L through the day (actors/pnl_series.py) and its chart on the dashboard's Risk page."""

from __future__ import annotations

from datetime import date, datetime, timezone

import requests

from actors.pnl_series import MAX_POINTS, PnlSeries, svg
from tests.conftest import alert, set_ltp
from tests.symbols import NIFTY_CE
from tests.test_dashboard_http import PASSWORD, login


def at(h: int, m: int, s: int = 0) -> datetime:
    return datetime(2026, 11, 30, h, m, s, tzinfo=timezone.utc)


def test_one_point_a_minute_the_last_read_wins_and_a_new_day_starts_afresh():
    series = PnlSeries()
    series.add(at(4, 0, 5), date(2026, 11, 30), 100.0, -10000.0)
    series.add(at(4, 0, 50), date(2026, 11, 30), 150.0, -10000.0)
    series.add(at(4, 1, 5), date(2026, 11, 30), None, -10000.0)  # unknown PnL: no point
    series.add(at(4, 2, 0), date(2026, 11, 30), -50.0, -9000.0)
    assert [(p["pnl"], p["floor"]) for p in series.as_dict()["points"]] == [(150.0, -10000.0), (-50.0, -9000.0)]
    again = PnlSeries.from_json(series.to_json())
    assert again.points == series.points and again.day == "2026-11-30"
    again.add(at(4, 0), date(2026, 12, 1), 5.0, None)
    assert again.day == "2026-12-01" and len(again.points) == 1
    assert PnlSeries.from_json("not json").points == []


def test_the_series_is_bounded():
    series = PnlSeries()
    for minute in range(MAX_POINTS + 30):
        series.add(datetime.fromtimestamp(1_800_000_000 + 60 * minute, timezone.utc), date(2026, 11, 30), 1.0, None)
    assert len(series.points) == MAX_POINTS


def test_the_chart_is_an_svg_of_numbers_only():
    points = [{"at": at(4, 0).isoformat(), "pnl": 100.0, "floor": -500.0},
              {"at": at(5, 0).isoformat(), "pnl": -200.0, "floor": -500.0}]
    chart = svg(points)
    assert chart.startswith("<svg") and 'class="pnl"' in chart and 'class="floor"' in chart
    assert "09:30 IST" in chart and "10:30 IST" in chart
    assert svg([]) == ""


def test_the_risk_page_draws_the_days_pnl(make_system, paper):
    system = make_system(operator={"password": PASSWORD}, risk={"pnl_poll_interval_s": 0.2, "max_daily_loss": 50000})
    set_ltp(paper, "NFO", NIFTY_CE, 100.0)
    status, body = system.inject_alert(alert(tradingsymbol=NIFTY_CE))
    assert status == 202
    system.wait_for_status(body["orders"][0]["command_id"], "EXECUTED")
    set_ltp(paper, "NFO", NIFTY_CE, 110.0)
    from messages.risk import GetPnlSeries

    system.wait_until(lambda: system.registry.ask("risk", GetPnlSeries(), timeout=5)["points"], 10,
                      "a P&L point")
    session, _ = login(system)
    page = session.get(f"{system.url}/ui/risk", timeout=5)
    assert page.status_code == 200
    assert '<svg class="pnl-chart"' in page.text and 'class="floor"' in page.text
    assert "script" not in page.text.split('<svg class="pnl-chart"')[1].split("</svg>")[0]
    assert requests.get(f"{system.url}/ui/risk", timeout=5, allow_redirects=False).status_code in (302, 303)
