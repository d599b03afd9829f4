"""The NorenOMS REST and WebSocket clients against a real PaperExchange (no mocks).

One exchange serves the whole module; every test logs in as its own uid (accounts are per uid), and the
faults are reset after each test. Waits poll a condition against a deadline; there are no fixed sleeps.
"""

from __future__ import annotations

import hashlib
import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pyotp
import pytest
import requests
from loguru import logger

from messages.noren import PlaceOrderRequest, WsOrderUpdate
from runtime.config import PaperConfig
from runtime.noren.errors import (
    BrokerError,
    BrokerRejected,
    NotSent,
    SessionExpired,
    UnknownOutcome,
)
from runtime.noren.rest import NorenRestClient, SessionInfo
from runtime.noren.ws import NorenWebSocket
from tests import symbols as sym
from tests.symbols import BANKNIFTY_CE, NIFTY_CE

paper = pytest.importorskip("runtime.paper", reason="the paper exchange is not available")

BLOCKED = "BLOCKED-EQ"
PASSWORD = "pa55-w0rd-never-logged"
TOTP_SEED = pyotp.random_base32()
API_SECRET = "api-secret-never-logged"
_uids = itertools.count(1)


# --------------------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exchange() -> Iterator[paper.PaperExchange]:
    config = PaperConfig(port=0, fill_delay_ms=20, reject_symbols=[BLOCKED], walk_volatility=0.0,
                         reject_market_orders=False)  # MKT orders are exercised here
    ex = paper.PaperExchange(config, port=0, seed=11)
    ex.start()
    try:
        yield ex
    finally:
        ex.stop()


def control(exchange, path: str, body: dict | None = None) -> requests.Response:
    url = exchange.base_url.rstrip("/") + path
    response = requests.post(url, json=body or {}, timeout=5) if body is not None else requests.get(url, timeout=5)
    response.raise_for_status()
    return response


@pytest.fixture(autouse=True)
def _reset_faults(request):
    yield
    if "exchange" in request.fixturenames:
        control(request.getfixturevalue("exchange"), "/paper/faults/reset", {})


def new_uid() -> str:
    return f"TEST{next(_uids):03d}"


def login(exchange, uid: str | None = None, **kwargs) -> NorenRestClient:
    client = NorenRestClient(exchange.rest_url, **kwargs)
    client.login_quickauth(uid or new_uid(), PASSWORD, TOTP_SEED, "VC_PAPER", API_SECRET, "test-imei")
    return client


def set_ltp(exchange, exch: str, tsym: str, lp: float) -> None:
    control(exchange, "/paper/ltp", {"exch": exch, "tsym": tsym, "lp": lp})


def wait_for(predicate: Callable[[], object], timeout_s: float = 5.0, what: str = "condition"):
    """Poll `predicate` until it returns something truthy (returned) or fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)


def order_row(client: NorenRestClient, norenordno: str):
    return next((row for row in client.order_book() if row.norenordno == norenordno), None)


def wait_status(client: NorenRestClient, norenordno: str, *statuses: str, timeout_s: float = 5.0):
    return wait_for(
        lambda: (row := order_row(client, norenordno)) is not None and row.status in statuses and row,
        timeout_s,
        f"order {norenordno} to reach {statuses}",
    )


def mkt(tsym: str, remarks: str, qty: int = 65, side: str = "B", exch: str = "NFO") -> PlaceOrderRequest:
    return PlaceOrderRequest(exch=exch, tsym=tsym, qty=qty, prc=0, trgprc=None, prd="M", trantype=side,
                             prctyp="MKT", remarks=remarks)


def free_closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Inbox:
    """Collects WS order updates and states; `wait` blocks on a condition with a deadline."""

    def __init__(self) -> None:
        self.orders: list[WsOrderUpdate] = []
        self.states: list[str] = []
        self._cond = threading.Condition()

    def on_order(self, update: WsOrderUpdate) -> None:
        with self._cond:
            self.orders.append(update)
            self._cond.notify_all()

    def on_state(self, state: str) -> None:
        with self._cond:
            self.states.append(state)
            self._cond.notify_all()

    def wait(self, predicate: Callable[[], object], timeout_s: float = 5.0, what: str = "ws event"):
        with self._cond:
            if not self._cond.wait_for(predicate, timeout_s):
                pytest.fail(f"timed out after {timeout_s} s waiting for {what}; states={self.states}")
            return predicate()

    def fill_for(self, remarks: str):
        return next((u for u in self.orders if u.remarks == remarks and u.status == "COMPLETE"), None)


def open_ws(exchange, client: NorenRestClient, inbox: Inbox, **kwargs) -> NorenWebSocket:
    ws = NorenWebSocket(exchange.ws_url, lambda: client.session, auth=client.auth, on_order=inbox.on_order,
                        on_state=inbox.on_state, heartbeat_s=0.5, backoff_initial_s=0.05, backoff_max_s=0.5,
                        **kwargs)
    ws.start()
    assert ws.connected.wait(5), f"websocket did not connect; states={inbox.states}"
    return ws


# --------------------------------------------------------------------------------------------------
# Session
# --------------------------------------------------------------------------------------------------


def test_quickauth_login_user_details_and_fork_shares_session(exchange):
    uid = new_uid()
    client = login(exchange, uid)
    assert client.session.uid == uid and client.session.actid == uid and client.session.token
    assert client.user_details().ok
    reader = client.fork()
    assert reader.session == client.session
    assert reader._http is not client._http  # its own connection
    assert reader.order_book() == []
    # a re-login in one client is seen by the other
    client.set_session(uid, uid, "stale-token")
    assert reader.session.token == "stale-token"
    client.login_quickauth(uid, PASSWORD, TOTP_SEED, "VC_PAPER", API_SECRET, "test-imei")
    assert reader.session.token != "stale-token"
    assert reader.user_details().ok


def test_rest_url_with_or_without_trailing_slash(exchange):
    base = exchange.rest_url.rstrip("/")
    for url in (base, base + "/"):
        client = NorenRestClient(url)
        client.login_quickauth(new_uid(), PASSWORD, TOTP_SEED, "VC", API_SECRET, "imei")
        assert client.order_book() == []


def test_oauth_login_and_bearer_calls(exchange):
    client = NorenRestClient(exchange.rest_url, auth="oauth")
    reply = client.login_oauth("auth-code-123", "client-id-1", API_SECRET, uid=new_uid())
    assert reply.ok and reply.access_token and client.session.token == reply.access_token
    assert client.order_book() == []
    assert client.limits().ok


def test_no_session_is_session_expired(exchange):
    with pytest.raises(SessionExpired):
        NorenRestClient(exchange.rest_url).order_book()


def test_logout_clears_session(exchange):
    client = login(exchange)
    client.logout()
    assert client.session is None
    with pytest.raises(SessionExpired):
        client.order_book()


# --------------------------------------------------------------------------------------------------
# Orders and books
# --------------------------------------------------------------------------------------------------


def test_empty_books_are_empty_lists(exchange):
    client = login(exchange)
    assert client.order_book() == []
    assert client.trade_book() == []
    assert client.position_book() == []


def test_market_order_fills_and_shows_in_every_book(exchange):
    client = login(exchange)
    tsym = NIFTY_CE
    set_ltp(exchange, "NFO", tsym, 120.0)
    norenordno = client.place_order(mkt(tsym, "cmd-mkt-1"))
    assert len(norenordno) == 14 and norenordno.isdigit()
    row = wait_status(client, norenordno, "COMPLETE")
    assert row.remarks == "cmd-mkt-1" and row.fillshares == 65 and row.avgprc == pytest.approx(120.0)
    assert row.qty == 65 and row.prd == "M" and row.trantype == "B" and row.tsym == tsym

    history = client.single_order_history(norenordno)
    assert history[0].status == "COMPLETE" and history[0].rpt == "Fill"
    assert history[-1].rpt in ("NewAck", "PendingNew")

    trades = client.trade_book()
    assert [t.norenordno for t in trades] == [norenordno]
    assert trades[0].flqty == 65 and trades[0].flprc == pytest.approx(120.0) and trades[0].flid

    positions = client.position_book()
    assert len(positions) == 1 and positions[0].netqty == 65 and positions[0].tsym == tsym
    set_ltp(exchange, "NFO", tsym, 121.0)
    assert client.position_book()[0].urmtom == pytest.approx(65.0)

    limits = client.limits()
    assert limits.ok and limits.cash > 0 and limits.marginused > 0


def test_limit_order_modify_and_cancel(exchange):
    client = login(exchange)
    tsym = sym.option("NIFTY", "P", 24000)
    set_ltp(exchange, "NFO", tsym, 200.0)
    request = PlaceOrderRequest(exch="NFO", tsym=tsym, qty=130, prc=150.0, trgprc=None, prd="I", trantype="B",
                                prctyp="LMT", remarks="cmd-lmt-1")
    norenordno = client.place_order(request)
    row = wait_status(client, norenordno, "OPEN")
    assert row.prc == 150.0 and row.fillshares == 0 and row.avgprc is None and row.pending_qty == 130

    assert client.modify_order(norenordno, "NFO", tsym, 195, "LMT", 155.5) == norenordno
    row = wait_for(lambda: (r := order_row(client, norenordno)) and r.prc == 155.5 and r, what="modify")
    assert row.qty == 195 and row.status == "OPEN"

    assert client.cancel_order(norenordno) == norenordno
    row = wait_status(client, norenordno, "CANCELED")
    assert row.cancelqty == 195 and row.is_terminal

    with pytest.raises(BrokerRejected) as info:
        client.cancel_order(norenordno)
    assert "not found" in info.value.emsg.lower()
    with pytest.raises(BrokerRejected):
        client.modify_order("99999999999999", "NFO", tsym, 65, "LMT", 100.0)


def test_stop_loss_limit_triggers(exchange):
    client = login(exchange)
    tsym = BANKNIFTY_CE
    set_ltp(exchange, "NFO", tsym, 300.0)
    request = PlaceOrderRequest(exch="NFO", tsym=tsym, qty=30, prc=311.0, trgprc=310.0, prd="M", trantype="B",
                                prctyp="SL-LMT", remarks="cmd-sl-1")
    norenordno = client.place_order(request)
    row = wait_status(client, norenordno, "TRIGGER_PENDING")
    assert row.trgprc == 310.0
    set_ltp(exchange, "NFO", tsym, 310.5)
    row = wait_status(client, norenordno, "COMPLETE")
    assert row.fillshares == 30 and row.avgprc == pytest.approx(310.5)


def test_symbol_with_ampersand_round_trips(exchange):
    client = login(exchange)
    set_ltp(exchange, "NSE", "M&M-EQ", 2900.0)
    norenordno = client.place_order(mkt("M&M-EQ", "cmd-amp-1", qty=1, exch="NSE"))
    row = wait_status(client, norenordno, "COMPLETE")
    assert row.tsym == "M&M-EQ"


def test_rejected_symbol_shows_rejected_with_reason(exchange):
    client = login(exchange)
    norenordno = client.place_order(mkt(BLOCKED, "cmd-rej-1", qty=1, exch="NSE"))  # Ok reply, order number
    row = wait_status(client, norenordno, "REJECTED")
    assert row.rejreason and row.remarks == "cmd-rej-1" and row.is_terminal


def test_quotes_and_search(exchange):
    client = login(exchange)
    found = client.search_scrip("NSE", "INFY")
    assert found and any(s.tsym == "INFY-EQ" for s in found)
    scrip = next(s for s in found if s.tsym == "INFY-EQ")
    quote = client.get_quotes("NSE", scrip.token)
    assert quote.ok and quote.lp and quote.lp > 0 and quote.ti == 0.05 and quote.ls == 1
    index = client.get_quotes("NSE", "26000")
    assert index.lp and index.lp > 0
    assert client.search_scrip("NFO", "NOSUCHTHINGATALL") == []


def test_fork_reads_while_the_original_places(exchange):
    client = login(exchange)
    reader = client.fork()
    tsym = sym.option("FINNIFTY", "C", 24000)
    set_ltp(exchange, "NFO", tsym, 80.0)
    errors: list[BaseException] = []
    stop = threading.Event()

    def read_books():
        try:
            while not stop.is_set():
                reader.order_book()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    thread = threading.Thread(target=read_books)
    thread.start()
    try:
        numbers = [client.place_order(mkt(tsym, f"cmd-fork-{i}", qty=60)) for i in range(5)]
    finally:
        stop.set()
        thread.join(5)
    assert not errors
    wait_for(lambda: {r.norenordno for r in reader.order_book()} >= set(numbers), what="orders in the fork's book")


# --------------------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------------------


def test_latency_fault_still_works(exchange):
    client = login(exchange)
    control(exchange, "/paper/faults", {"latency_ms": 150})
    started = time.monotonic()
    assert client.order_book() == []
    assert time.monotonic() - started >= 0.14


def test_hung_place_order_is_unknown_outcome_but_exists_at_the_exchange(exchange):
    client = login(exchange, request_timeout_s=0.4)
    tsym = sym.option("NIFTY", "C", 26000)
    set_ltp(exchange, "NFO", tsym, 60.0)
    control(exchange, "/paper/faults", {"hang_place_orders": 1})
    with pytest.raises(UnknownOutcome) as info:
        client.place_order(mkt(tsym, "cmd-hang-1"))
    assert not info.value.retry_safe and "PlaceOrder" in str(info.value)

    def at_exchange():
        rows = control(exchange, "/paper/orders").json()
        rows = rows.get("orders", rows) if isinstance(rows, dict) else rows
        return [r for r in rows if r.get("remarks") == "cmd-hang-1"]

    assert len(wait_for(at_exchange, what="the hung order at the exchange")) == 1
    # and it is in our own order book too (this is how the watcher resolves an unknown outcome)
    wait_for(lambda: any(r.remarks == "cmd-hang-1" for r in client.order_book()), what="hung order in book")


def test_http_500_is_unknown_outcome(exchange):
    client = login(exchange)
    control(exchange, "/paper/faults", {"http_500": 2})
    with pytest.raises(UnknownOutcome) as info:
        client.place_order(mkt(sym.option("NIFTY", "C", 25000), "cmd-500-1"))
    assert info.value.http_status == 500
    with pytest.raises(BrokerError):
        client.order_book()
    assert isinstance(client.order_book(), list)  # the fault is used up


def test_expired_session_then_login_again(exchange):
    uid = new_uid()
    client = login(exchange, uid)
    control(exchange, "/paper/faults", {"expire_sessions": True})
    with pytest.raises(SessionExpired) as info:
        client.order_book()
    assert info.value.retry_safe
    with pytest.raises(SessionExpired):
        client.place_order(mkt(sym.option("NIFTY", "C", 25100), "cmd-exp-1"))
    control(exchange, "/paper/faults/reset", {})
    client.login_quickauth(uid, PASSWORD, TOTP_SEED, "VC_PAPER", API_SECRET, "test-imei")
    assert client.order_book() == []  # the order sent with the expired session was not placed


def test_connection_refused_is_not_sent():
    client = NorenRestClient(f"http://127.0.0.1:{free_closed_port()}/NorenWClientTP/", connect_timeout_s=1.0)
    with pytest.raises(NotSent) as info:
        client.login_quickauth("X", PASSWORD, TOTP_SEED, "VC", API_SECRET, "imei")
    assert info.value.retry_safe
    client.set_session("X", "X", "token")
    with pytest.raises(NotSent):
        client.place_order(mkt(sym.option("NIFTY", "C", 25200), "cmd-refused-1"))


def test_keep_alive_reuses_one_connection(exchange):
    client = login(exchange)
    for _ in range(5):
        client.order_book()
    pools = client._http.get_adapter(client._url("OrderBook")).poolmanager.pools
    assert sum(pools[key].num_connections for key in pools.keys()) == 1  # noqa: SIM118 - not iterable


def test_tracebacks_with_variable_values_show_no_secrets():
    """loguru's diagnose=True renders local variables of every frame: our frames must hold only redacted values."""
    lines: list[str] = []
    sink = logger.add(lines.append, level="DEBUG", format="{message}", backtrace=True, diagnose=True)
    password, seed, api_secret, token = PASSWORD, TOTP_SEED, API_SECRET, "token-never-logged"
    client = NorenRestClient(f"http://127.0.0.1:{free_closed_port()}/NorenWClientTP/", connect_timeout_s=1.0)
    try:
        for call in (
            lambda: client.login_quickauth("X", password, seed, "VC", api_secret, "imei"),
            lambda: client.login_quickauth("X", password, "not base32!", "VC", api_secret, "imei"),
            lambda: client.login_oauth("auth-code-never-logged", "client", api_secret, uid="X"),
            lambda: (client.set_session("X", "X", token), client.place_order(mkt("A", "cmd-x")))[1],
        ):
            try:
                call()
            except (BrokerError, ValueError):
                logger.opt(exception=True).error("call failed")
    finally:
        logger.remove(sink)
    rendered = "".join(lines)
    assert "Traceback" in rendered and "<redacted>" in rendered
    # The test's own frames show the secrets it passes in; every frame of the client must not.
    ours = [frame for frame in rendered.split('File "')[1:] if frame.split('"', 1)[0].endswith(
        ("runtime/noren/rest.py", "runtime/noren/errors.py"))]
    assert len(ours) >= 6
    hashed = hashlib.sha256(PASSWORD.encode()).hexdigest()
    for frame in ours:
        for secret in (PASSWORD, hashed, TOTP_SEED, API_SECRET, "token-never-logged", "auth-code-never-logged"):
            assert secret not in frame, frame


def test_secrets_never_logged(exchange):
    lines: list[str] = []
    sink = logger.add(lines.append, level="TRACE", format="{message}")
    try:
        client = login(exchange)
        client.order_book()
        token = client.session.token
        control(exchange, "/paper/faults", {"http_500": 1})
        with pytest.raises(UnknownOutcome):
            client.order_book()
    finally:
        logger.remove(sink)
    text = "".join(lines)
    assert lines, "expected debug logs"
    for secret in (PASSWORD, TOTP_SEED, API_SECRET, token):
        assert secret not in text


# --------------------------------------------------------------------------------------------------
# WebSocket
# --------------------------------------------------------------------------------------------------


def test_ws_receives_fill_for_market_order(exchange):
    client = login(exchange)
    inbox = Inbox()
    ws = open_ws(exchange, client, inbox)
    try:
        assert inbox.states[-1] == "connected"
        tsym = sym.option("NIFTY", "C", 25800)
        set_ltp(exchange, "NFO", tsym, 95.0)
        norenordno = client.place_order(mkt(tsym, "cmd-ws-1"))
        fill = inbox.wait(lambda: inbox.fill_for("cmd-ws-1"), what="the om fill")
        assert fill.norenordno == norenordno and fill.fillshares == 65 and fill.avgprc == pytest.approx(95.0)
        assert fill.reporttype == "Fill" and fill.prd == "M"
    finally:
        ws.stop()
    assert not ws.running and not ws.connected.is_set()
    assert inbox.states[-1] == "disconnected"
    ws.stop()  # idempotent


def test_ws_reconnects_after_drop_and_receives_next_fill(exchange):
    client = login(exchange)
    inbox = Inbox()
    ws = open_ws(exchange, client, inbox)
    try:
        connects = ws.connects
        control(exchange, "/paper/faults", {"drop_websockets": True})
        inbox.wait(lambda: "disconnected" in inbox.states, what="the drop")
        inbox.wait(lambda: ws.connects > connects and ws.connected.is_set(), what="the reconnect")
        tsym = sym.option("NIFTY", "C", 25900)
        set_ltp(exchange, "NFO", tsym, 70.0)
        client.place_order(mkt(tsym, "cmd-ws-2"))
        inbox.wait(lambda: inbox.fill_for("cmd-ws-2"), what="the om fill after reconnect")
    finally:
        ws.stop()


def test_ws_callback_exception_does_not_kill_the_thread(exchange):
    client = login(exchange)
    inbox = Inbox()
    calls = []

    def bad_then_good(update: WsOrderUpdate) -> None:
        calls.append(update)
        if len(calls) == 1:
            raise RuntimeError("callback bug")
        inbox.on_order(update)

    ws = NorenWebSocket(exchange.ws_url, lambda: client.session, on_order=bad_then_good, on_state=inbox.on_state,
                        heartbeat_s=0.5)
    ws.start()
    try:
        assert ws.connected.wait(5)
        tsym = sym.option("NIFTY", "P", 25000)
        set_ltp(exchange, "NFO", tsym, 40.0)
        client.place_order(mkt(tsym, "cmd-ws-3"))
        inbox.wait(lambda: inbox.fill_for("cmd-ws-3"), what="a later update after the callback raised")
        assert ws.running and ws.connects == 1
    finally:
        ws.stop()


def test_ws_touchline_subscription(exchange):
    client = login(exchange)
    quotes = []
    got = threading.Event()

    def on_quote(quote):
        quotes.append(quote)
        if quote.lp == 111.0:
            got.set()

    inbox = Inbox()
    tsym = sym.option("NIFTY", "C", 26100)
    set_ltp(exchange, "NFO", tsym, 110.0)
    token = client.search_scrip("NFO", tsym)[0].token
    ws = open_ws(exchange, client, inbox, on_quote=on_quote)
    try:
        ws.subscribe_touchline([f"NFO|{token}"])
        wait_for(lambda: any(q.t == "tk" and q.tk == token for q in quotes), what="the tk snapshot")
        set_ltp(exchange, "NFO", tsym, 111.0)
        assert got.wait(5), "no touchline update with the new price"
        assert ws.subscriptions == [f"NFO|{token}"]
    finally:
        ws.stop()


def test_ws_bad_credentials_report_auth_failed(exchange):
    inbox = Inbox()
    bad = SessionInfo(uid="NOBODY", actid="NOBODY", token="not-a-token")
    ws = NorenWebSocket(exchange.ws_url, lambda: bad, on_order=inbox.on_order, on_state=inbox.on_state,
                        backoff_initial_s=0.05, backoff_max_s=0.2)
    ws.start()
    try:
        inbox.wait(lambda: "auth_failed" in inbox.states, what="auth_failed")
        assert not ws.connected.is_set() and ws.running  # still retrying with fresh credentials
    finally:
        ws.stop()


def test_ws_expired_session_auth_fails_until_login_again(exchange):
    uid = new_uid()
    client = login(exchange, uid)
    inbox = Inbox()
    ws = open_ws(exchange, client, inbox)
    try:
        control(exchange, "/paper/faults", {"expire_sessions": True})
        inbox.wait(lambda: "auth_failed" in inbox.states, what="auth_failed with the expired token")
        client.login_quickauth(uid, PASSWORD, TOTP_SEED, "VC_PAPER", API_SECRET, "test-imei")
        ws.retry_now()
        inbox.wait(lambda: ws.connects == 2 and ws.connected.is_set(), what="the reconnect with the new token")
        tsym = sym.option("NIFTY", "P", 25200)
        set_ltp(exchange, "NFO", tsym, 45.0)
        client.place_order(mkt(tsym, "cmd-ws-relogin"))
        inbox.wait(lambda: inbox.fill_for("cmd-ws-relogin"), what="the om fill after re-login")
    finally:
        ws.stop()


def test_ws_oauth(exchange):
    client = NorenRestClient(exchange.rest_url, auth="oauth")
    client.login_oauth("auth-code-ws", "client-id-1", API_SECRET, uid=new_uid())
    inbox = Inbox()
    ws = open_ws(exchange, client, inbox)
    try:
        tsym = sym.option("NIFTY", "P", 25100)
        set_ltp(exchange, "NFO", tsym, 50.0)
        client.place_order(mkt(tsym, "cmd-ws-oauth"))
        inbox.wait(lambda: inbox.fill_for("cmd-ws-oauth"), what="the om fill over OAuth")
    finally:
        ws.stop()


def test_lean_order_book_rows_carry_the_same_reconciliation_fields_as_the_full_book(exchange):
    """order_book_rows (what the watcher reads) keeps only the fields reconciliation needs, with the same
    values and normalisation as order_book; an empty book is [] and no session is SessionExpired."""
    client = login(exchange)
    assert client.order_book_rows() == []
    numbers = [client.place_order(mkt(f"LEAN{k}-EQ", f"lean-{k}", qty=1 + k, side="B" if k % 2 else "S", exch="NSE"))
               for k in range(3)]
    # Settled first: an order filling between the two reads below would make them differ for a good reason.
    wait_for(lambda: len(rows := client.order_book()) == 3
             and all(r.status in ("COMPLETE", "REJECTED", "CANCELED") for r in rows), what="three settled orders")
    fields = ("norenordno", "remarks", "status", "fillshares", "avgprc", "rejreason", "exch", "tsym", "trantype",
              "qty")
    full = {row.norenordno: tuple(getattr(row, f) for f in fields) for row in client.order_book()}
    lean = {row.norenordno: tuple(getattr(row, f) for f in fields) for row in client.order_book_rows()}
    assert set(full) == set(numbers) and lean == full
    assert not hasattr(client.order_book_rows()[0], "prctyp")  # the rest of the row is not kept
    with pytest.raises(SessionExpired):
        NorenRestClient(exchange.rest_url).order_book_rows()
