"""Pure tests of the broker actor's logic: PlaceOrder mapping and the rate limiter."""

from __future__ import annotations

import pytest

from actors.broker import RateLimiter, to_place_request
from messages.orders import OrderSnapshot
from tests.symbols import NIFTY_CE

NOW = "2026-01-01T09:15:00.000000+00:00"


def snap(side="BUY", product="NRML", order_type="MARKET", price=0.0, trigger=None, qty=65, exchange="NFO",
         command_id="oms0123456789abcdef") -> OrderSnapshot:
    return OrderSnapshot(
        command_id=command_id, alert_id="a1", client_id="C1", source="webhook", strategy_name="S1",
        execution_type="ENTRY", exchange=exchange, symbol=NIFTY_CE, side=side, quantity=qty,
        product=product, order_type=order_type, price=price, trigger_price=trigger, status="SENT_TO_BROKER",
        tag=None, broker_order_id=None, filled_qty=0, avg_price=None, created_at=NOW, updated_at=NOW)


# ---- to_place_request -------------------------------------------------------------------------------

def test_market_buy_nrml():
    r = to_place_request(snap(price=123.0))
    assert (r.exch, r.tsym, r.qty, r.trantype, r.prd, r.prctyp, r.prc, r.trgprc) == (
        "NFO", NIFTY_CE, 65, "B", "M", "MKT", 0.0, None)
    assert r.remarks == "oms0123456789abcdef"


@pytest.mark.parametrize("side,wire", [("BUY", "B"), ("SELL", "S")])
def test_side_mapping(side, wire):
    assert to_place_request(snap(side=side)).trantype == wire


@pytest.mark.parametrize("product,wire", [("NRML", "M"), ("MIS", "I"), ("CNC", "C")])
def test_product_mapping(product, wire):
    assert to_place_request(snap(product=product)).prd == wire


def test_limit_carries_price_and_no_trigger():
    r = to_place_request(snap(order_type="LIMIT", price=101.5, trigger=99.0))
    assert (r.prctyp, r.prc, r.trgprc) == ("LMT", 101.5, None)


def test_sl_is_sl_lmt_with_price_and_trigger():
    r = to_place_request(snap(order_type="SL", price=101.5, trigger=100.0, side="SELL"))
    assert (r.prctyp, r.prc, r.trgprc, r.trantype) == ("SL-LMT", 101.5, 100.0, "S")


def test_sl_m_is_sl_mkt_with_zero_price_and_trigger():
    r = to_place_request(snap(order_type="SL-M", price=55.0, trigger=100.0))
    assert (r.prctyp, r.prc, r.trgprc) == ("SL-MKT", 0.0, 100.0)


def test_remarks_is_the_command_id():
    assert to_place_request(snap(command_id="omsfeedbeef12345678")).remarks == "omsfeedbeef12345678"


# ---- RateLimiter ------------------------------------------------------------------------------------

def test_empty_limiter_never_waits():
    assert RateLimiter(per_second=5, per_minute=100).delay(123.0) == 0.0


def test_per_second_window():
    lim = RateLimiter(per_second=2, per_minute=1000)
    lim.record(10.0)
    assert lim.delay(10.1) == 0.0
    lim.record(10.1)
    assert lim.delay(10.2) == pytest.approx(0.8)   # third must wait until the first leaves the window
    assert lim.delay(11.0) == pytest.approx(0.0)
    assert lim.delay(11.05) == 0.0


def test_per_second_window_slides():
    lim = RateLimiter(per_second=2, per_minute=1000)
    for t in (0.0, 0.5, 1.0):
        assert lim.delay(t) == pytest.approx(0.0)
        lim.record(t)
    # 0.5 and 1.0 are in the window at 1.2: wait until 0.5 leaves it
    assert lim.delay(1.2) == pytest.approx(0.3)


def test_per_minute_window():
    lim = RateLimiter(per_second=100, per_minute=3)
    for t in (0.0, 5.0, 10.0):
        lim.record(t)
    assert lim.delay(20.0) == pytest.approx(40.0)
    assert lim.delay(59.0) == pytest.approx(1.0)
    assert lim.delay(60.0) == pytest.approx(0.0)
    lim.record(60.0)
    assert lim.delay(61.0) == pytest.approx(4.0)   # 5.0, 10.0, 60.0 in the window: wait for 5.0


def test_both_windows_take_the_longer_wait():
    lim = RateLimiter(per_second=1, per_minute=2)
    lim.record(0.0)
    lim.record(30.0)
    assert lim.delay(30.2) == pytest.approx(29.8)


def test_following_the_delays_never_exceeds_the_limits():
    lim = RateLimiter(per_second=3, per_minute=10)
    now, sent = 0.0, []
    for _ in range(25):
        now += lim.delay(now)
        lim.record(now)
        sent.append(now)
    for t in sent:
        assert sum(1 for s in sent if t <= s < t + 1.0 - 1e-9) <= 3
        assert sum(1 for s in sent if t <= s < t + 60.0 - 1e-9) <= 10



def test_a_leg_the_broker_request_cannot_express_fails_before_the_claim(make_system, paper):
    """Never 'maybe sent': a CREATED leg that cannot become a PlaceOrder ends FAILED, never SENT_TO_BROKER."""
    from conftest import paper_orders
    from messages.commands import RegisterAlert, SendLegs
    from messages.orders import NewOrder

    system = make_system(broker={"market_protection": False})
    leg = NewOrder(command_id="omsinvalidrequest01", alert_id="bad", client_id="paper", source="webhook",
                   strategy_name="S1", execution_type="ENTRY", exchange="NFO", symbol=NIFTY_CE,
                   side="BUY", quantity=0, product="NRML", order_type="MARKET")
    result = system.registry.ask("store", RegisterAlert(alert_id="bad", source="webhook", legs=(leg,), announce=False))
    system.inject("broker", SendLegs(orders=(result.orders[0],)))
    order = system.wait_for_status("omsinvalidrequest01", "FAILED")
    assert order["tag"] == "SEND_FAILED:INVALID_REQUEST"
    assert [e["to_status"] for e in order["events"]] == ["CREATED", "FAILED"]
    assert system.supervisor.restarts == 0
    assert not [o for o in paper_orders(paper) if o.get("remarks") == "omsinvalidrequest01"]
