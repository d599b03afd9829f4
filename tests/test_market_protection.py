"""Market protection: MARKET -> LMT at last price +/- band, SL-M -> SL-LMT at trigger +/- band, tick-rounded.

Pure tests call the functions of actors/broker.py directly; the integration tests run the whole service against
the real paper exchange, which refuses MKT / SL-MKT (`reject_market_orders`, its default) and, with
`enforce_lot_tick`, any price off the tick, as the live exchange does.
"""

from __future__ import annotations

import pytest

from actors.broker import Protection, protected_limit, round_to_tick, to_place_request
from actors.instruments import instrument_kind, underlying
from messages.orders import OrderSnapshot
from runtime.config import ConfigError, config_from_dict
from tests.conftest import alert, paper_orders, set_ltp
from tests import symbols as sym
from tests.symbols import NIFTY_CE, NIFTY_FUT

SYM = NIFTY_CE
NOW = "2026-01-01T09:15:00.000000+00:00"
TERMINAL = ("EXECUTED", "FAILED")


def snap(side="BUY", order_type="MARKET", trigger=None, symbol=SYM, exchange="NFO") -> OrderSnapshot:
    return OrderSnapshot(
        command_id="oms0123456789abcdef", alert_id="a1", client_id="C1", source="webhook", strategy_name="S1",
        execution_type="ENTRY", exchange=exchange, symbol=symbol, side=side, quantity=65, product="NRML",
        order_type=order_type, price=0.0, trigger_price=trigger, status="CREATED", tag=None,
        broker_order_id=None, filled_qty=0, avg_price=None, created_at=NOW, updated_at=NOW)


# ---- instrument kinds -----------------------------------------------------------------------------

@pytest.mark.parametrize("exch,tsym,kind", [
    ("NFO", NIFTY_CE, "option"),
    ("NFO", sym.option("BANKNIFTY", "P", 52000), "option"),
    ("NFO", NIFTY_FUT, "future"),
    ("NFO", sym.future("M&M"), "future"),
    ("BFO", "SENSEX25MAR75000CE", "option"),
    ("BFO", "SENSEX2531175000PE", "option"),
    ("MCX", f"CRUDEOIL{sym.expiry_code()}", "future"),
    ("CDS", sym.future("USDINR"), "future"),
    ("NSE", "INFY-EQ", "equity"),
    ("BSE", "RELIANCE", "equity"),
    ("nfo", "nifty27mar26c25700", "option"),
])
def test_instrument_kind(exch, tsym, kind):
    assert instrument_kind(exch, tsym) == kind


@pytest.mark.parametrize("exch,tsym,name", [
    ("NFO", NIFTY_CE, "NIFTY"),
    ("NFO", sym.future("BANKNIFTY"), "BANKNIFTY"),
    ("NFO", sym.option("NIFTYNXT50", "C", 70000), "NIFTYNXT50"),
    ("BFO", "SENSEX2531175000CE", "SENSEX"),
    ("NFO", sym.future("M&M"), "M&M"),
    ("NSE", "NIFTY", None),
    ("NSE", "INFY-EQ", None),
])
def test_underlying(exch, tsym, name):
    assert underlying(exch, tsym) == name


# ---- rounding -----------------------------------------------------------------------------------------

def test_buy_rounds_up_and_sell_rounds_down_to_the_tick():
    assert protected_limit("BUY", 191.80, 0.05, 5.0) == 201.40  # 201.39 -> up
    assert protected_limit("SELL", 191.80, 0.05, 5.0) == 182.20  # 182.21 -> down
    assert protected_limit("BUY", 2500.0, 0.05, 1.0) == 2525.0
    assert protected_limit("SELL", 2500.0, 0.05, 1.0) == 2475.0


def test_float_error_does_not_add_a_tick():
    # 100 * 1.05 is 105.00000000000001 in floats and 105.0 / 0.05 is 2100.0000000000005: still 105.00.
    assert protected_limit("BUY", 100.0, 0.05, 5.0) == 105.0
    assert protected_limit("SELL", 100.0, 0.05, 5.0) == 95.0
    assert round_to_tick(201.35, 0.05, "BUY") == 201.35  # 4027 ticks exactly, not 4027.000000000002
    assert round_to_tick(201.35, 0.05, "SELL") == 201.35
    assert round_to_tick(0.1 + 0.2, 0.05, "BUY") == 0.3  # 0.30000000000000004
    assert round_to_tick(0.7, 0.1, "SELL") == 0.7  # 0.7 / 0.1 is 6.999999999999999 in floats
    assert protected_limit("BUY", 0.35, 0.05, 0.0) == 0.35


def test_results_sit_exactly_on_the_tick():
    for lp in (57.15, 99.95, 123.45, 191.8, 333.3, 1234.55, 24999.95):
        for side in ("BUY", "SELL"):
            for band in (0.5, 1.0, 2.5, 5.0):
                limit = protected_limit(side, lp, 0.05, band)
                assert round(limit / 0.05, 6) == round(limit / 0.05)
                assert (limit >= lp) if side == "BUY" else (limit <= lp)
                assert limit == float(f"{limit:.2f}")  # no float dust: the wire shows exactly this


def test_other_tick_sizes():
    assert protected_limit("BUY", 83.1234, 0.0025, 1.0) == 83.955  # 83.954634 -> 83.9550
    assert protected_limit("SELL", 6123.0, 1.0, 1.0) == 6061.0  # 6061.77 -> down to the rupee
    assert round_to_tick(2412.3, 0.1, "BUY") == 2412.3


def test_never_below_one_tick():
    assert protected_limit("SELL", 0.05, 0.05, 5.0) == 0.05
    assert protected_limit("SELL", 0.10, 0.05, 60.0) == 0.05
    assert round_to_tick(0.0, 0.05, "SELL") == 0.05


def test_circuit_limits_cap_the_band():
    assert protected_limit("BUY", 100.0, 0.05, 5.0, upper=103.0) == 103.0
    assert protected_limit("SELL", 100.0, 0.05, 5.0, lower=97.5) == 97.5
    assert protected_limit("BUY", 100.0, 0.05, 5.0, upper=120.0) == 105.0  # far circuit: no effect
    assert protected_limit("BUY", 100.0, 0.05, 5.0, upper=90.0) == 105.0  # nonsense circuit: ignored


def test_refuses_nonsense_inputs():
    with pytest.raises(ValueError):
        protected_limit("BUY", 0.0, 0.05, 5.0)
    with pytest.raises(ValueError):
        round_to_tick(10.0, 0.0, "BUY")


# ---- the request -------------------------------------------------------------------------------------

def test_market_goes_out_as_lmt_and_sl_m_as_sl_lmt():
    market = Protection(kind="option", band_pct=5.0, tick=0.05, last_price=191.80)
    order = snap()
    limit = market.limit(order)
    request = to_place_request(order, limit)
    assert (request.prctyp, request.prc, request.trgprc) == ("LMT", 201.40, None)
    assert market.describe(order, limit) == "LMT 201.40 (MARKET protected 5% option, last 191.80, tick 0.05)"

    stop = Protection(kind="option", band_pct=5.0, tick=0.05)
    for side, expected in (("BUY", 210.0), ("SELL", 190.0)):
        order = snap(side=side, order_type="SL-M", trigger=200.0)
        request = to_place_request(order, stop.limit(order))
        assert (request.prctyp, request.prc, request.trgprc) == ("SL-LMT", expected, 200.0)
    order = snap(side="SELL", order_type="SL-M", trigger=123.47)  # an off-tick trigger still gives a tick limit
    assert stop.limit(order) == 117.25  # 117.2965 -> down


def test_without_a_limit_the_intent_goes_out_unchanged():
    assert to_place_request(snap()).prctyp == "MKT"
    assert to_place_request(snap(order_type="SL-M", trigger=100.0)).prctyp == "SL-MKT"


# ---- configuration -----------------------------------------------------------------------------------

def test_band_config_merges_with_the_defaults_and_is_checked():
    cfg = config_from_dict({"broker": {"market_protection_pct": {"option": 3}}}, environ={})
    assert cfg.broker.market_protection and cfg.broker.market_protection_pct == {
        "option": 3.0, "future": 1.0, "equity": 1.0}
    assert cfg.paper.reject_market_orders is True
    with pytest.raises(ConfigError, match="market_protection_pct"):
        config_from_dict({"broker": {"market_protection_pct": {"index": 1.0}}}, environ={})
    with pytest.raises(ConfigError, match="market_protection_pct"):
        config_from_dict({"broker": {"market_protection_pct": {"option": 100.0}}}, environ={})


# ---- against the paper exchange ----------------------------------------------------------------------

def at_paper(exchange, command_id: str) -> list[dict]:
    return [o for o in paper_orders(exchange) if o.get("remarks") == command_id]


def one_leg(system, payload) -> str:
    status, body = system.inject_alert(payload)
    assert status == 202, body
    return body["orders"][0]["command_id"]


def sent_detail(order: dict) -> str:
    return next(e["detail"] for e in order["events"] if e["to_status"] == "SENT_TO_BROKER")


@pytest.fixture
def strict_paper(paper_factory):
    # Like the live exchange: no MKT / SL-MKT for API orders, prices on the tick, quantities in lots.
    return paper_factory(reject_market_orders=True, enforce_lot_tick=True)


def test_market_buy_and_sell_go_out_as_protected_limits_and_fill(make_system, strict_paper):
    system = make_system(strict_paper)
    set_ltp(strict_paper, "NFO", SYM, 191.80)
    cid = one_leg(system, alert(alert_id="mp-buy"))
    order = system.wait_for_status(cid, TERMINAL)
    assert order["status"] == "EXECUTED", order
    sent = at_paper(strict_paper, cid)
    assert len(sent) == 1
    assert (sent[0]["prctyp"], float(sent[0]["prc"]), sent[0]["status"]) == ("LMT", 201.40, "COMPLETE")
    assert order["avg_price"] == 191.80  # it filled at the market, inside the band
    assert (order["order_type"], order["price"]) == ("MARKET", 0.0)  # the row keeps the intent
    assert "LMT 201.40 (MARKET protected 5% option, last 191.80" in sent_detail(order)

    exit_cid = one_leg(system, alert(alert_id="mp-sell", execution_type="EXIT"))
    order = system.wait_for_status(exit_cid, TERMINAL)
    assert order["status"] == "EXECUTED" and order["side"] == "SELL", order
    sent = at_paper(strict_paper, exit_cid)
    assert (sent[0]["trantype"], sent[0]["prctyp"], float(sent[0]["prc"])) == ("S", "LMT", 182.20)
    assert "LMT 182.20" in sent_detail(order)


def test_equity_and_future_use_their_own_bands(make_system, strict_paper):
    system = make_system(strict_paper, broker={"market_protection_pct": {"future": 0.5}})
    set_ltp(strict_paper, "NSE", "INFY-EQ", 1500.00)
    set_ltp(strict_paper, "NFO", NIFTY_FUT, 24000.00)
    status, body = system.inject_alert(alert(alert_id="mp-kinds", exchange="NSE", legs=[
        {"tradingsymbol": "INFY-EQ", "direction": "BUY", "qty": 10, "order_type": "MARKET", "product_type": "MIS"},
        {"tradingsymbol": NIFTY_FUT, "direction": "SELL", "qty": 65, "order_type": "MARKET",
         "product_type": "NRML", "exchange": "NFO"}]))
    assert status == 202, body
    equity, future = (o["command_id"] for o in body["orders"])
    for cid in (equity, future):
        assert system.wait_for_status(cid, TERMINAL)["status"] == "EXECUTED"
    assert float(at_paper(strict_paper, equity)[0]["prc"]) == 1515.00  # +1%
    assert float(at_paper(strict_paper, future)[0]["prc"]) == 23880.00  # -0.5%


def test_sl_m_goes_out_as_sl_lmt_and_fills_once_triggered(make_system, strict_paper):
    system = make_system(strict_paper)
    set_ltp(strict_paper, "NFO", SYM, 190.00)
    cid = one_leg(system, alert(alert_id="mp-slm", order_type="SL-M", trigger_price=200.0))
    system.wait_until(lambda: at_paper(strict_paper, cid), 10, "the SL-LMT at the exchange")
    sent = at_paper(strict_paper, cid)[0]
    assert (sent["prctyp"], float(sent["trgprc"]), float(sent["prc"])) == ("SL-LMT", 200.0, 210.0)
    assert sent["status"] == "TRIGGER_PENDING"
    set_ltp(strict_paper, "NFO", SYM, 205.00)
    order = system.wait_for_status(cid, TERMINAL)
    assert order["status"] == "EXECUTED" and order["avg_price"] == 205.00, order
    assert "SL-LMT 210.00 trigger 200.00 (SL-M protected 5% option" in sent_detail(order)
    assert (order["order_type"], order["price"], order["trigger_price"]) == ("SL-M", 0.0, 200.0)


def test_no_quote_fails_before_the_claim_and_nothing_reaches_the_exchange(make_system, strict_paper):
    system = make_system(strict_paper)
    status, body = system.inject_alert(alert(alert_id="mp-none", legs=[
        {"tradingsymbol": "NOSUCHSYMBOL", "direction": "BUY", "qty": 65, "order_type": "MARKET",
         "product_type": "NRML"}]))
    assert status == 202, body
    cid = body["orders"][0]["command_id"]
    order = system.wait_for_status(cid, TERMINAL)
    assert (order["status"], order["tag"]) == ("FAILED", "SEND_FAILED:NO_QUOTE"), order
    assert [(e["from_status"], e["to_status"]) for e in order["events"]] == [(None, "CREATED"), ("CREATED", "FAILED")]
    assert "NOSUCHSYMBOL" in order["events"][-1]["detail"]
    assert order["broker_order_id"] is None
    assert paper_orders(strict_paper) == []


def test_switched_off_sends_mkt_as_it_is(make_system, paper_factory):
    lenient = paper_factory(reject_market_orders=False)
    system = make_system(lenient, broker={"market_protection": False})
    cid = one_leg(system, alert(alert_id="mp-off"))
    assert system.wait_for_status(cid, TERMINAL)["status"] == "EXECUTED"
    assert at_paper(lenient, cid)[0]["prctyp"] == "MKT"
