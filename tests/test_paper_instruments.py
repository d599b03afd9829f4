"""The paper exchange knows the instruments the exchange would list: malformed, expired and unknown-underlying
symbols are rejected, lots and ticks are checked by default, and SearchScrip / GetQuotes agree with those checks.
Spoken to by the official NorenRestApiPy client."""

from __future__ import annotations

import time
from datetime import date, timedelta

import pytest
import requests
from NorenRestApiPy.NorenApi import NorenApi

from runtime.config import PaperConfig
from runtime.paper import PaperExchange
from runtime.paper.engine import Engine, SymbolError, parse_symbol
from tests import symbols as sym
from tests.symbols import BANKNIFTY_CE, NIFTY_CE, NIFTY_FUT

PAST = sym.option("NIFTY", "C", 25700, day=date.today() - timedelta(days=40))


@pytest.fixture(scope="module")
def exchange():
    with PaperExchange(PaperConfig(port=0, fill_delay_ms=10, walk_volatility=0.0)) as running:
        yield running


@pytest.fixture(scope="module")
def api(exchange):
    client = NorenApi(host=exchange.rest_url, websocket=exchange.ws_url)
    reply = client.login(userid="INS1", password="pw", twoFA="123456", vendor_code="VC", api_secret="s", imei="t")
    assert reply is not None and reply["stat"] == "Ok"
    return client


def wait_final(api: NorenApi, number: str) -> dict:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        row = next((r for r in api.get_order_book() or [] if r["norenordno"] == number), None)
        if row is not None and row["status"] in ("COMPLETE", "REJECTED", "CANCELED", "OPEN"):
            return row
        time.sleep(0.02)
    raise AssertionError(f"order {number} not in the book")


def place(api: NorenApi, tsym: str, qty: int = 65, price: float = 100.0, exchange: str = "NFO") -> dict:
    reply = api.place_order(buy_or_sell="B", product_type="M", exchange=exchange, tradingsymbol=tsym, quantity=qty,
                            discloseqty=0, price_type="LMT", price=price, remarks="ins")
    assert reply is not None and reply["stat"] == "Ok", reply  # exchange rejections still get an order number
    return wait_final(api, reply["norenordno"])


@pytest.mark.parametrize("tsym, why", [
    ("NIFTY32FOO26C99999", "is not a date"),  # the expiry is not a date
    ("NIFTY30FEB27C25700", "is not a date"),
    (PAST, "expired on"),
    (f"NIFTYX{sym.expiry_code()}C25700", "unknown underlying NIFTYX"),
    (f"FOO{sym.expiry_code()}F", "unknown underlying FOO"),
    ("NIFTY", "Invalid Trading Symbol"),
    (f"NIFTY{sym.expiry_code()}C0", "strike"),
])
def test_unknown_or_malformed_instruments_are_rejected(api, exchange, tsym, why):
    row = place(api, tsym)
    assert row["status"] == "REJECTED" and "Invalid Trading Symbol" in row["rejreason"] and why in row["rejreason"]
    assert row["rejby"] == "RMS" and "fillshares" not in row
    assert api.searchscrip(exchange="NFO", searchtext=tsym) is None  # SearchScrip does not know it either
    assert not [o for o in requests.get(exchange.base_url + "/paper/orders", timeout=5).json()
                if o["norenordno"] == row["norenordno"] and o["token"]]  # and no instrument was made up


def test_qty_must_be_a_multiple_of_the_lot_and_price_of_the_tick(api):
    assert "lot size 65" in place(api, NIFTY_CE, qty=50)["rejreason"]
    assert "lot size 30" in place(api, BANKNIFTY_CE, qty=65)["rejreason"]
    assert "tick size 0.05" in place(api, NIFTY_CE, price=100.03)["rejreason"]
    assert place(api, NIFTY_CE, qty=130, price=100.05)["status"] in ("OPEN", "COMPLETE")
    assert place(api, "INFY-EQ", qty=7, exchange="NSE")["status"] in ("OPEN", "COMPLETE")  # equities: lot 1


def test_searchscrip_and_getquotes_agree_with_the_checks(api):
    for tsym, lot in ((NIFTY_CE, 65), (BANKNIFTY_CE, 30), (NIFTY_FUT, 65), (sym.future("RELIANCE"), 25)):
        (scrip,) = api.searchscrip(exchange="NFO", searchtext=tsym)["values"]
        quote = api.get_quotes(exchange="NFO", token=scrip["token"])
        assert (scrip["tsym"], scrip["ls"], scrip["ti"]) == (tsym, str(lot), "0.05")
        assert (quote["tsym"], quote["ls"], quote["ti"]) == (tsym, str(lot), "0.05")
        assert place(api, tsym, qty=lot, price=float(quote["lp"]))["status"] != "REJECTED"


def test_lot_and_tick_checks_can_be_switched_off():
    engine = Engine(PaperConfig(enforce_lot_tick=False, fill_delay_ms=0))
    order, _ = engine.place("U1", {"exch": "NFO", "tsym": NIFTY_CE, "qty": "50", "prc": "100.03", "prd": "M",
                                   "trantype": "B", "prctyp": "LMT", "ret": "DAY"}, time.time())
    assert order.status != "REJECTED"
    bad, _ = engine.place("U1", {"exch": "NFO", "tsym": "NIFTY32FOO26C99999", "qty": "65", "prc": "100", "prd": "M",
                                 "trantype": "B", "prctyp": "LMT", "ret": "DAY"}, time.time())
    assert bad.status == "REJECTED"  # the symbol check stays on


def test_parse_symbol_knows_the_exchange_formats():
    assert parse_symbol("NFO", NIFTY_CE)[:2] == ("OPTION", "NIFTY")
    assert parse_symbol("NFO", sym.future("M&M"))[:2] == ("FUTURE", "M&M")
    assert parse_symbol("BFO", sym.option("SENSEX", "P", 80000))[:2] == ("OPTION", "SENSEX")
    assert parse_symbol("BFO", "SENSEX26DEC80000CE")[2] == date(2026, 12, 31)
    assert parse_symbol("MCX", sym.future("CRUDEOIL"))[:2] == ("FUTURE", "CRUDEOIL")
    assert parse_symbol("NSE", "M&M-EQ")[:2] == ("EQUITY", "M&M")
    for exch, tsym in (("NSE", "INFY"), ("NFO", "SENSEX" + sym.expiry_code() + "F"), ("NSE", "infy-eq")):
        with pytest.raises(SymbolError):
            parse_symbol(exch, tsym)
