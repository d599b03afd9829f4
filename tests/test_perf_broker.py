"""The broker's per-order fast paths keep their guarantees.

* RateLimiter: O(1) per send, and the same waits as the scan it replaced (injected clock).
* The CREATED pre-check reads the status with one constant SELECT (real SQLite).
* Market protection prices a MARKET leg from the WebSocket touchline when it can be trusted: the `tk` of the
  current connection came, the connection is up and heard from. Otherwise GetQuotes, as before. Against the real
  paper exchange, plus a small silent server for the "heard from" rule. Waits poll a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import threading
import time
from collections import deque

import pytest
from aiohttp import WSMsgType, web

from actors.broker import (
    Instrument,
    Protection,
    RateLimiter,
    protected_limit,
    touchline_protection,
)
from messages.noren import touch_fields
from messages.orders import OrderSnapshot
from runtime.noren.rest import NorenRestClient, SessionInfo
from runtime.noren.ws import NorenWebSocket, Touch, TouchlineBook
from storage.queries import order_status
from tests.conftest import alert, paper_faults, paper_orders, set_ltp
from tests.symbols import NIFTY_CE

SYM = NIFTY_CE
TERMINAL = ("EXECUTED", "FAILED")


def wait_for(predicate, timeout_s: float = 5.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)


# ---- RateLimiter ------------------------------------------------------------------------------------

class ScanLimiter:
    """The implementation RateLimiter replaced (a scan of the minute's sends per call): the reference."""

    def __init__(self, per_second: float, per_minute: float):
        self.per_second, self.per_minute, self.sent = per_second, per_minute, deque()

    def delay(self, now: float) -> float:
        while self.sent and now - self.sent[0] >= 60.0:
            self.sent.popleft()
        waits = [0.0]
        if len(self.sent) >= self.per_minute:
            waits.append(60.0 - (now - self.sent[-int(self.per_minute)]))
        recent = [t for t in self.sent if now - t < 1.0]
        if len(recent) >= self.per_second:
            waits.append(1.0 - (now - recent[-int(self.per_second)]))
        return max(waits)

    def record(self, now: float) -> None:
        self.sent.append(now)


@pytest.mark.parametrize("per_second, per_minute", [(1, 2), (2, 1000), (3, 10), (10, 200), (20, 200), (2.5, 7.5),
                                                    (0.5, 3), (100, 3), (1e9, 1e9)])
def test_limiter_waits_exactly_like_the_scan_it_replaced(per_second, per_minute):
    rng = random.Random(f"{per_second}/{per_minute}")
    fast, scan = RateLimiter(per_second, per_minute), ScanLimiter(per_second, per_minute)
    now = 1000.0
    for _ in range(3000):
        now += rng.choice((0.0, 0.001, 0.01, 0.05, 0.2, 0.7, 1.0, 3.0, 30.0, 61.0))
        assert fast.delay(now) == scan.delay(now)
        if rng.random() < 0.8:  # senders that wait as told, and some that do not (a burst is still counted)
            if rng.random() < 0.7:
                now += fast.delay(now)
            fast.record(now)
            scan.record(now)
        # bounded memory: never more than the sends a wait can depend on
        if per_minute >= 1:
            assert len(fast.sent) <= math.ceil(per_minute)
        if per_second >= 1:
            assert len(fast.recent) <= math.ceil(per_second)


def test_limiter_at_500_per_second_keeps_only_the_windows():
    lim = RateLimiter(per_second=1e9, per_minute=1e9)
    now = 0.0
    for _ in range(500 * 90):  # 90 s at 500/s on an injected clock
        assert lim.delay(now) == 0.0
        lim.record(now)
        now += 0.002
    lim.delay(now)
    assert len(lim.sent) <= 500 * 60 + 1 and len(lim.recent) <= 501


def test_limiter_following_the_delays_keeps_both_limits_over_a_long_run():
    lim = RateLimiter(per_second=10, per_minute=200)
    now, sent = 0.0, []
    for _ in range(1000):
        now += lim.delay(now)
        lim.record(now)
        sent.append(now)
    for i, t in enumerate(sent):
        assert sum(1 for s in sent[i:i + 11] if s < t + 1.0 - 1e-9) <= 10
        assert sum(1 for s in sent[i:i + 201] if s < t + 60.0 - 1e-9) <= 200
    assert sent[-1] == pytest.approx(60.0 * (1000 // 200 - 1) + 19.0 + 0.9, abs=1.0)  # 200 a minute, no slower


# ---- the CREATED pre-check --------------------------------------------------------------------------

def test_order_status_reads_the_row_as_the_store_wrote_it(make_system, paper):
    system = make_system(broker={"market_protection": False})
    status, body = system.inject_alert(alert(alert_id="pre-1", order_type="LIMIT", price=1.0))
    assert status == 202, body
    cid = body["orders"][0]["command_id"]
    row = system.wait_until(lambda: (o := system.order(cid)) and o["broker_order_id"] and o, 10,
                            "the order at the broker")
    assert order_status(cid) == row["status"] == "SENT_TO_BROKER"
    assert order_status("omsnosuchorder0000") is None
    assert order_status("x' OR '1'='1") is None  # a parameter, never SQL text


# ---- touchline parsing and the book -----------------------------------------------------------------

def test_touch_fields_reads_only_what_the_push_carries():
    assert touch_fields({"t": "tf", "e": "NFO", "tk": "1", "v": "100"}) == {}
    assert touch_fields({"t": "tk", "lp": "191.80", "ti": "0.05", "ls": "65", "pc": "1.0"}) == {
        "lp": 191.8, "ti": 0.05, "ls": 65}
    assert touch_fields({"lp": "", "uc": "None", "lc": "1,250.50"}) == {"lp": None, "uc": None, "lc": 1250.5}
    assert touch_fields({"lp": 100, "ls": 65.0, "uc": "nan"}) == {"lp": 100, "ls": 65, "uc": None}  # as the models
    for bad in ({"lp": "abc"}, {"lp": float("nan")}, {"lp": "inf"}, {"lp": [1]}, {"lp": True}, {"ls": "65.5"}):
        with pytest.raises(ValueError):
            touch_fields(bad)


def test_book_knows_a_value_only_from_a_snapshot_on():
    book = TouchlineBook()
    assert book.apply({"t": "tf", "e": "NFO", "tk": "1", "lp": "101.00"})
    assert book.get("NFO|1") is None  # a delta without its snapshot says nothing of the other fields
    book.apply({"t": "tk", "e": "NFO", "tk": "1", "lp": "100.00", "ti": "0.05", "ls": "65", "v": "0"})
    assert book.get("NFO|1") == Touch(lp=100.0, ti=0.05, ls=65)
    book.apply({"t": "tf", "e": "NFO", "tk": "1", "v": "65"})
    assert book.get("NFO|1") == Touch(lp=100.0, ti=0.05, ls=65)
    book.apply({"t": "tf", "e": "NFO", "tk": "1", "lp": "101.50"})
    assert book.get("NFO|1") == Touch(lp=101.5, ti=0.05, ls=65)
    book.apply({"t": "tk", "e": "NFO", "tk": "2", "lp": "50.00"})
    assert not book.apply({"t": "tf", "e": "NFO", "tk": "1", "lp": "garbage"})
    assert book.get("NFO|1") is None and book.get("NFO|2") == Touch(lp=50.0)  # a change may have been lost
    book.clear()
    assert book.get("NFO|2") is None


# ---- pricing from a touchline (pure) ------------------------------------------------------------------

def snap(side="BUY", order_type="MARKET", **fields) -> OrderSnapshot:
    base = dict(command_id="omsfeedbeef12345678", alert_id="a", client_id="c", source="webhook", strategy_name="S",
                execution_type="ENTRY", exchange="NFO", symbol=SYM, side=side, quantity=65, product="NRML",
                order_type=order_type, price=0.0, trigger_price=None, status="CREATED", tag=None,
                broker_order_id=None, filled_qty=0, avg_price=None, created_at="t", updated_at="t")
    base.update(fields)
    return OrderSnapshot.model_validate(base)


def test_touchline_price_is_the_getquotes_price_when_the_circuits_do_not_bind():
    rng = random.Random(5)
    for _ in range(2000):
        lp = round(rng.uniform(0.05, 3000.0), 2)
        tick = rng.choice((0.05, 0.01, 0.0025, 1.0))
        band = rng.choice((0.5, 1.0, 5.0))
        uc, lc = round(lp * rng.uniform(0.9, 1.3), 2), round(lp * rng.uniform(0.7, 1.1), 2)
        for side in ("BUY", "SELL"):
            order = snap(side=side)
            want = protected_limit(side, lp, tick, band, upper=uc, lower=lc)  # what GetQuotes gives
            inst = Instrument(token="1", tick=tick, upper=uc, lower=lc)
            got = touchline_protection(order, Touch(lp=lp, ti=tick), inst, "option", band)
            if got is not None:
                assert got.source == "touchline" and got.limit(order) == want
            else:  # only where the cached circuit may decide the price
                reach = protected_limit(side, lp, tick, band)
                assert reach >= uc if side == "BUY" else reach <= lc
            # circuits carried by the touchline itself are applied exactly as GetQuotes' are
            live = touchline_protection(order, Touch(lp=lp, ti=tick, uc=uc, lc=lc), Instrument(token="1"), "option",
                                        band)
            assert live is not None and live.limit(order) == want


def test_touchline_pricing_declines_what_only_getquotes_can_answer():
    order = snap()
    inst = Instrument(token="1", tick=0.05, upper=240.0, lower=150.0)
    assert touchline_protection(order, Touch(lp=None, ti=0.05), inst, "option", 5.0) is None
    assert touchline_protection(order, Touch(lp=0.0, ti=0.05), inst, "option", 5.0) is None
    assert touchline_protection(order, Touch(lp=200.0), Instrument(token="1", upper=240.0), "option", 5.0) is None
    assert touchline_protection(order, Touch(lp=200.0, ti=0.05), Instrument(token="1"), "option", 5.0) is None
    assert touchline_protection(order, Touch(lp=230.0, ti=0.05), inst, "option", 5.0) is None  # 241.50 > uc 240
    assert touchline_protection(snap(side="SELL"), Touch(lp=155.0, ti=0.05), inst, "option", 5.0) is None
    tick_from_scrip = touchline_protection(order, Touch(lp=200.0), inst, "option", 5.0)
    assert tick_from_scrip == Protection(kind="option", band_pct=5.0, tick=0.05, last_price=200.0, source="touchline")
    assert tick_from_scrip.describe(order, 210.0) == (
        "LMT 210.00 (MARKET protected 5% option, last 200.00 from touchline, tick 0.05)")


# ---- the touchline over a real connection (paper exchange) ------------------------------------------

def rest_client(exchange, uid: str) -> NorenRestClient:
    client = NorenRestClient(exchange.rest_url)
    client.login_quickauth(uid, "pw", "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP", "VC", "secret", "imei")
    return client


def test_a_touchline_is_trusted_only_from_the_tk_of_the_current_connection(paper):
    client = rest_client(paper, "TOUCH1")
    set_ltp(paper, "NFO", SYM, 120.0)
    token = client.search_scrip("NFO", SYM)[0].token
    key = f"NFO|{token}"
    states: list[str] = []
    ws = NorenWebSocket(paper.ws_url, lambda: client.session, on_order=lambda u: None, on_state=states.append,
                        backoff_initial_s=30.0, backoff_max_s=30.0)  # stays down after a drop until retry_now()
    ws.start()
    try:
        assert ws.connected.wait(5)
        assert ws.touchline(key) is None
        ws.subscribe_touchline([key])
        wait_for(lambda: ws.touchline(key), what="the tk snapshot")
        touch = ws.touchline(key)
        assert (touch.lp, touch.ti, touch.ls) == (120.0, 0.05, 65)
        assert touch.uc is None and touch.lc is None  # the documented touchline has no circuit limits
        set_ltp(paper, "NFO", SYM, 121.5)
        wait_for(lambda: ws.touchline(key).lp == 121.5, what="the tf delta")

        paper_faults(paper, drop_websockets=True)
        wait_for(lambda: "disconnected" in states, what="the drop")
        assert ws.touchline(key) is None  # down: nothing is trusted
        set_ltp(paper, "NFO", SYM, 125.0)  # a change while down, never pushed to this client
        ws.retry_now()
        wait_for(lambda: ws.connects == 2 and ws.connected.is_set(), what="the reconnect")
        wait_for(lambda: ws.touchline(key), what="the tk of the new connection")
        assert ws.touchline(key).lp == 125.0  # re-subscribed: the new snapshot, not the value from before

        ws.unsubscribe_touchline([key])
        assert ws.touchline(key) is None and ws.subscriptions == []
    finally:
        ws.stop()
    assert ws.touchline(key) is None


class SilentFeed:
    """A NorenOMS-like socket that acks login and touchline subscriptions but never answers pings, and sends
    what the test tells it to: the "heard from" rule needs a server that goes quiet."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.sockets: list[web.WebSocketResponse] = []
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(5)

    def _run(self):
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_get("/", self._ws)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.url = f"ws://127.0.0.1:{self.runner.addresses[0][1]}/"
        self.ready.set()
        self.loop.run_forever()

    async def _ws(self, request):
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        self.sockets.append(ws)
        async for message in ws:
            if message.type != WSMsgType.TEXT:
                continue  # pings included: never answered
            data = json.loads(message.data)
            if data["t"] == "c":
                await ws.send_str(json.dumps({"t": "ck", "s": "OK", "uid": data["uid"]}))
            elif data["t"] == "t":
                for key in data["k"].split("#"):
                    exch, token = key.split("|")
                    await ws.send_str(json.dumps({"t": "tk", "e": exch, "tk": token, "lp": "100.00", "ti": "0.05",
                                                  "ls": "65"}))
        return ws

    def push(self, message: dict) -> None:
        async def send():
            for ws in self.sockets:
                await ws.send_str(json.dumps(message))

        asyncio.run_coroutine_threadsafe(send(), self.loop).result(5)

    def stop(self):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def test_a_quiet_connection_is_not_trusted_and_a_bad_push_forgets_the_instrument():
    feed = SilentFeed()
    creds = SessionInfo(uid="QUIET1", actid="QUIET1", token="token")
    ws = NorenWebSocket(feed.url, lambda: creds, on_order=lambda u: None, heartbeat_s=1.0)  # quiet after 2 s
    ws.start()
    try:
        assert ws.connected.wait(5)
        ws.subscribe_touchline(["NFO|7"])
        wait_for(lambda: ws.touchline("NFO|7"), what="the tk")
        feed.push({"t": "tk", "e": "NFO", "tk": "8", "lp": "5.00"})  # never subscribed: not kept
        # no pong and no push: after two heartbeats the feed may be dead without the socket knowing it yet
        wait_for(lambda: ws.touchline("NFO|7") is None, 5, "the quiet feed to be distrusted")
        assert ws.connected.is_set()
        feed.push({"t": "tf", "e": "NFO", "tk": "7", "lp": "101.00"})
        wait_for(lambda: ws.touchline("NFO|7"), 3, "the feed heard from again")
        assert ws.touchline("NFO|7") == Touch(lp=101.0, ti=0.05, ls=65)
        assert ws.touchline("NFO|8") is None
        feed.push({"t": "tf", "e": "NFO", "tk": "7", "lp": "1O1.5"})  # malformed: a change may be lost
        wait_for(lambda: ws._book.get("NFO|7") is None, 3, "the instrument to be forgotten")
        feed.push({"t": "tf", "e": "NFO", "tk": "7", "lp": "102.00"})
        ws.subscribe_touchline(["NFO|9"])  # its tk comes after that delta on the same socket: a marker
        wait_for(lambda: ws.touchline("NFO|9"), 3, "the marker tk")
        assert ws.touchline("NFO|7") is None  # a delta without a new snapshot did not bring it back
    finally:
        ws.stop()
        feed.stop()


# ---- market protection end to end -------------------------------------------------------------------

@pytest.fixture
def strict_paper(paper_factory):
    return paper_factory(reject_market_orders=True, enforce_lot_tick=True)


def broker_ws(system) -> NorenWebSocket:
    return system.registry.get("broker")._actor_weakref().ws


def sent_detail(order: dict) -> str:
    return next(e["detail"] for e in order["events"] if e["to_status"] == "SENT_TO_BROKER")


def at_paper(exchange, cid: str) -> dict:
    return next(o for o in paper_orders(exchange) if o.get("remarks") == cid)


def one_leg(system, payload) -> str:
    status, body = system.inject_alert(payload)
    assert status == 202, body
    return body["orders"][0]["command_id"]


def test_market_orders_after_the_first_are_priced_from_the_touchline(make_system, strict_paper):
    system = make_system(strict_paper)
    set_ltp(strict_paper, "NFO", SYM, 191.80)
    first = system.wait_for_status(one_leg(system, alert(strategy="T1", alert_id="t-1")), TERMINAL)
    assert first["status"] == "EXECUTED", first
    assert "last 191.80, tick" in sent_detail(first)  # first use: GetQuotes (the tk cannot be there yet)

    ws = broker_ws(system)
    key = next(k for k in ws.subscriptions if k.startswith("NFO|"))
    wait_for(lambda: (t := ws.touchline(key)) and t.lp == 191.80, what="the tk at the broker")
    set_ltp(strict_paper, "NFO", SYM, 200.00)
    wait_for(lambda: ws.touchline(key).lp == 200.0, what="the tf at the broker")
    second = system.wait_for_status(one_leg(system, alert(strategy="T2", alert_id="t-2")), TERMINAL)
    assert second["status"] == "EXECUTED" and second["avg_price"] == 200.0, second
    assert "LMT 210.00 (MARKET protected 5% option, last 200.00 from touchline, tick 0.05)" in sent_detail(second)
    sent = at_paper(strict_paper, second["command_id"])
    assert (sent["prctyp"], float(sent["prc"])) == ("LMT", 210.0)

    # SELL: the lower circuit of the first order's GetQuotes stands in, far below this limit
    out = system.wait_for_status(one_leg(system, alert(strategy="T2", alert_id="t-3", execution_type="EXIT")),
                                 TERMINAL)
    assert out["status"] == "EXECUTED" and out["side"] == "SELL", out
    assert "LMT 190.00 (MARKET protected 5% option, last 200.00 from touchline" in sent_detail(out)


def test_a_circuit_limit_the_band_would_reach_is_asked_of_getquotes(make_system, strict_paper):
    system = make_system(strict_paper)
    set_ltp(strict_paper, "NFO", SYM, 100.00)
    first = system.wait_for_status(one_leg(system, alert(strategy="C1", alert_id="c-1")), TERMINAL)
    assert first["status"] == "EXECUTED", first
    ws = broker_ws(system)
    key = ws.subscriptions[0]
    quote = system.client.fork().get_quotes("NFO", key.split("|")[1])
    uc = quote.uc
    near = round(uc / 1.02, 1)  # lp below the circuit, lp + 5% above it
    set_ltp(strict_paper, "NFO", SYM, near)
    wait_for(lambda: (t := ws.touchline(key)) and t.lp == near, what="the tf at the broker")
    capped = system.wait_for_status(one_leg(system, alert(strategy="C2", alert_id="c-2")), TERMINAL)
    assert capped["status"] == "EXECUTED", capped
    detail = sent_detail(capped)
    assert "from touchline" not in detail and f"last {near:.2f}, tick" in detail  # GetQuotes decided
    assert float(at_paper(strict_paper, capped["command_id"])["prc"]) == uc  # capped at the upper circuit


def test_without_the_websocket_every_market_order_asks_getquotes(make_system, strict_paper):
    system = make_system(strict_paper, broker={"use_websocket": False})
    set_ltp(strict_paper, "NFO", SYM, 191.80)
    for i in range(2):
        order = system.wait_for_status(one_leg(system, alert(strategy=f"W{i}", alert_id=f"w-{i}")), TERMINAL)
        assert order["status"] == "EXECUTED", order
        assert "LMT 201.40 (MARKET protected 5% option, last 191.80, tick 0.05)" in sent_detail(order)
