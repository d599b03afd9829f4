"""The paper exchange on a real socket, spoken to by the official NorenRestApiPy 0.0.22 client (unchanged)
and by raw requests / websocket-client for the wire details and the faults."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time

import pytest
import requests
import websocket
from NorenRestApiPy.NorenApi import NorenApi

from runtime.config import PaperConfig
from runtime.paper import PaperExchange
from tests import symbols as sym
from tests.symbols import BANKNIFTY_CE, NIFTY_CE

OPT = NIFTY_CE
NO_DATA = 'Error Occurred : 5 "no data"'
SESSION_EXPIRED = "Session Expired :  Invalid Session Key"
REQUEST_TIME = re.compile(r"^\d{2}:\d{2}:\d{2} \d{2}-\d{2}-\d{4}$")


class Api(NorenApi):
    """The official client, only pointed at the paper exchange (as its README shows)."""

    def __init__(self, exchange: PaperExchange) -> None:
        NorenApi.__init__(self, host=exchange.rest_url, websocket=exchange.ws_url)


@pytest.fixture(scope="module")
def exchange():
    config = PaperConfig(fill_delay_ms=20, reject_symbols=["BLOCKED-EQ"], tick_interval_ms=100,
                         reject_market_orders=False)  # the official client's MKT orders are exercised here
    with PaperExchange(config, port=0, seed=11) as running:
        yield running


@pytest.fixture(autouse=True)
def clean_faults(exchange):
    yield
    requests.post(exchange.base_url + "/paper/faults/reset", timeout=5)


def wait_until(condition, timeout: float = 5.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def login(exchange: PaperExchange, uid: str) -> tuple[Api, str]:
    api = Api(exchange)
    reply = api.login(userid=uid, password="pw", twoFA="123456", vendor_code="VC", api_secret="s", imei="test")
    assert reply is not None and reply["stat"] == "Ok"
    return api, reply["susertoken"]


def raw(exchange: PaperExchange, route: str, data: dict, key: str | None = None, **kwargs) -> requests.Response:
    """A POST exactly as the official client builds it: raw `jData=<json>&jKey=<token>`, no Content-Type."""
    body = "jData=" + json.dumps(data) + (f"&jKey={key}" if key is not None else "")
    return requests.post(exchange.rest_url + "/" + route.lstrip("/"), data=body, timeout=kwargs.pop("timeout", 5),
                         **kwargs)


def set_ltp(exchange: PaperExchange, exch: str, tsym: str, lp: float) -> dict:
    reply = requests.post(exchange.base_url + "/paper/ltp", json={"exch": exch, "tsym": tsym, "lp": lp}, timeout=5)
    assert reply.status_code == 200, reply.text
    return reply.json()


def book_order(api: Api, number: str) -> dict | None:
    return next((row for row in api.get_order_book() or [] if row["norenordno"] == number), None)


def wait_status(api: Api, number: str, status: str) -> dict:
    return wait_until(lambda: (row := book_order(api, number)) and row["status"] == status and row,
                      what=f"{number} {status}")


def paper_orders(exchange: PaperExchange) -> list[dict]:
    return requests.get(exchange.base_url + "/paper/orders", timeout=5).json()


def open_socket(exchange: PaperExchange, uid: str, token: str) -> websocket.WebSocket:
    ws = websocket.create_connection(exchange.ws_url, timeout=5)
    ws.send(json.dumps({"t": "c", "uid": uid, "actid": uid, "susertoken": token, "source": "API"}))
    assert json.loads(ws.recv()) == {"t": "ck", "s": "OK", "uid": uid}
    return ws


def socket_closes(ws: websocket.WebSocket) -> bool:
    try:
        while True:
            frame = ws.recv_data_frame(control_frame=True)[1]
            if frame.opcode == websocket.ABNF.OPCODE_CLOSE:
                return True
    except (websocket.WebSocketConnectionClosedException, ConnectionError):
        return True
    except websocket.WebSocketTimeoutException:
        return False


# ---------------------------------------------------------------- official client: login and orders


def test_login_reply_has_the_session_fields(exchange):
    api = Api(exchange)
    reply = api.login(userid="C_LOGIN", password="pw", twoFA="1", vendor_code="VC", api_secret="s", imei="i")
    for name in ("susertoken", "actid", "uname", "exarr", "prarr", "lastaccesstime", "request_time"):
        assert name in reply, name
    assert reply["actid"] == "C_LOGIN" and REQUEST_TIME.match(reply["request_time"])
    details = raw(exchange, "UserDetails", {"uid": "C_LOGIN"}, reply["susertoken"]).json()
    assert details["stat"] == "Ok" and details["actid"] == "C_LOGIN"
    assert api.logout()["stat"] == "Ok"
    assert raw(exchange, "UserDetails", {"uid": "C_LOGIN"}, reply["susertoken"]).json()["emsg"] == SESSION_EXPIRED


def test_market_order_fills_and_shows_in_every_book(exchange):
    api, _ = login(exchange, "C_MKT")
    set_ltp(exchange, "NFO", OPT, 150.0)
    placed = api.place_order(buy_or_sell="B", product_type="M", exchange="NFO", tradingsymbol=OPT, quantity=65,
                             discloseqty=0, price_type="MKT", price=0, remarks="cmd-mkt-1")
    assert placed["stat"] == "Ok" and re.fullmatch(r"\d{14}", placed["norenordno"])
    number = placed["norenordno"]
    row = wait_status(api, number, "COMPLETE")
    assert (row["fillshares"], row["avgprc"], row["remarks"], row["tsym"], row["qty"]) == (
        "65", "150.00", "cmd-mkt-1", OPT, "65")
    assert row["token"] == set_ltp(exchange, "NFO", OPT, 150.0)["token"] and row["ls"] == "65"
    history = api.single_order_history(number)
    assert [state["rpt"] for state in history] == ["Fill", "New", "PendingNew", "NewAck"]
    assert all(state["stat"] == "Ok" and state["remarks"] == "cmd-mkt-1" for state in history)
    [trade] = api.get_trade_book()
    assert (trade["norenordno"], trade["flqty"], trade["flprc"], trade["remarks"]) == (number, "65", "150.00",
                                                                                       "cmd-mkt-1")
    assert trade["flid"] and trade["fltm"]
    [position] = api.get_positions()
    assert (position["netqty"], position["netavgprc"], position["prd"], position["urmtom"]) == (
        "65", "150.00", "M", "0.00")
    limits = api.get_limits()
    assert limits["stat"] == "Ok" and float(limits["marginused"]) == 65 * 150.0
    mine = [o for o in paper_orders(exchange) if o["norenordno"] == number]
    assert mine and mine[0]["uid"] == "C_MKT" and mine[0]["status"] == "COMPLETE"


def test_limit_order_rests_is_modified_fills_on_price_cross(exchange):
    api, _ = login(exchange, "C_LMT")
    tsym = sym.option("NIFTY", "P", 25000)
    set_ltp(exchange, "NFO", tsym, 200.0)
    number = api.place_order("S", "M", "NFO", tsym, 65, 0, "LMT", price=220.0, remarks="cmd-lmt")["norenordno"]
    wait_status(api, number, "OPEN")
    modified = api.modify_order(orderno=number, exchange="NFO", tradingsymbol=tsym, newquantity=130,
                                newprice_type="LMT", newprice=210.0)
    assert modified["stat"] == "Ok" and modified["result"] == number
    row = wait_status(api, number, "OPEN")
    assert (row["qty"], row["prc"]) == ("130", "210.00")
    assert api.single_order_history(number)[0]["rpt"] == "Replaced"
    set_ltp(exchange, "NFO", tsym, 212.5)
    row = wait_status(api, number, "COMPLETE")
    assert (row["fillshares"], row["avgprc"]) == ("130", "212.50")


def test_cancel_open_order_and_unknown_orders(exchange):
    api, token = login(exchange, "C_CXL")
    set_ltp(exchange, "NFO", OPT, 150.0)
    number = api.place_order("B", "M", "NFO", OPT, 65, 0, "LMT", price=100.0, remarks="cmd-cxl")["norenordno"]
    wait_status(api, number, "OPEN")
    assert api.cancel_order(number)["result"] == number
    row = wait_status(api, number, "CANCELED")
    assert row["cancelqty"] == "65"
    assert api.cancel_order(number) is None
    reply = raw(exchange, "CancelOrder", {"uid": "C_CXL", "norenordno": number}, token).json()
    assert reply["stat"] == "Not_Ok" and reply["emsg"] == "Rejected : ORA:Order not found to Cancel"
    reply = raw(exchange, "ModifyOrder", {"uid": "C_CXL", "norenordno": "123", "exch": "NFO", "tsym": OPT,
                                          "qty": "65", "prctyp": "LMT", "prc": "1"}, token).json()
    assert reply["emsg"] == "Rejected : ORA:Order not found" and REQUEST_TIME.match(reply["request_time"])


def test_stop_limit_order_waits_for_its_trigger(exchange):
    api, _ = login(exchange, "C_SL")
    tsym = BANKNIFTY_CE
    set_ltp(exchange, "NFO", tsym, 300.0)
    number = api.place_order("B", "M", "NFO", tsym, 30, 0, "SL-LMT", price=311.0, trigger_price=310.0,
                             remarks="cmd-sl")["norenordno"]
    row = wait_status(api, number, "TRIGGER_PENDING")
    assert row["trgprc"] == "310.00" and row["ls"] == "30"
    set_ltp(exchange, "NFO", tsym, 310.5)
    row = wait_status(api, number, "COMPLETE")
    assert row["avgprc"] == "310.50"


def test_large_order_fills_in_partial_fills(exchange):
    api, _ = login(exchange, "C_PART")
    set_ltp(exchange, "NSE", "ITC-EQ", 400.0)
    number = api.place_order("B", "C", "NSE", "ITC-EQ", 2500, 0, "MKT", remarks="cmd-part")["norenordno"]
    wait_status(api, number, "COMPLETE")
    assert [trade["flqty"] for trade in api.get_trade_book()] == ["500", "1000", "1000"]
    fills = [state for state in api.single_order_history(number) if state["rpt"] == "Fill"]
    assert [(state["status"], state["fillshares"]) for state in fills] == [
        ("COMPLETE", "2500"), ("OPEN", "2000"), ("OPEN", "1000")]


def test_rejections_reply_ok_then_the_order_is_rejected(exchange):
    api, token = login(exchange, "C_REJ")
    blocked = api.place_order("B", "C", "NSE", "BLOCKED-EQ", 1, 0, "MKT", remarks="cmd-blocked")
    assert blocked["stat"] == "Ok"
    row = wait_status(api, blocked["norenordno"], "REJECTED")
    assert row["rejreason"] and row["rejby"] and row["remarks"] == "cmd-blocked"
    bad = raw(exchange, "PlaceOrder", {"uid": "C_REJ", "actid": "C_REJ", "exch": "NFO", "tsym": OPT, "qty": "abc",
                                       "prc": "0", "prd": "M", "trantype": "B", "prctyp": "MKT", "ret": "DAY",
                                       "remarks": "cmd-bad"}, token).json()
    assert bad["stat"] == "Ok"
    row = wait_status(api, bad["norenordno"], "REJECTED")
    assert "Quantity" in row["rejreason"] and row["remarks"] == "cmd-bad"


def test_symbol_with_ampersand_round_trips(exchange):
    api, token = login(exchange, "C_MM")
    found = api.searchscrip("NSE", "M&M")
    assert found["stat"] == "Ok" and found["values"][0]["tsym"] == "M&M-EQ"
    token_mm = found["values"][0]["token"]
    quote = api.get_quotes("NSE", token_mm)
    assert quote["tsym"] == "M&M-EQ" and quote["ti"] == "0.05" and quote["ls"] == "1"
    for name in ("lp", "uc", "lc", "o", "h", "l", "c"):
        assert float(quote[name]) > 0, name
    number = api.place_order("B", "C", "NSE", "M&M-EQ", 1, 0, "LMT", price=1.0, remarks="cmd-mm")["norenordno"]
    assert book_order(api, number)["tsym"] == "M&M-EQ"
    # the same call spelled by hand: tsym quote_plus'ed inside the JSON
    body = {"uid": "C_MM", "actid": "C_MM", "exch": "NSE", "tsym": "M%26M-EQ", "qty": "1", "prc": "1",
            "prd": "C", "trantype": "B", "prctyp": "LMT", "ret": "DAY", "remarks": "a&jKey=b"}
    reply = raw(exchange, "PlaceOrder", body, token).json()
    row = book_order(api, reply["norenordno"])
    assert row["tsym"] == "M&M-EQ" and row["token"] == token_mm and row["remarks"] == "a&jKey=b"
    assert api.get_quotes("NSE", "999") is None


def test_index_quote_and_empty_books(exchange):
    api, token = login(exchange, "C_EMPTY")
    assert api.get_order_book() is None and api.get_trade_book() is None and api.get_positions() is None
    for route in ("OrderBook", "TradeBook", "PositionBook"):
        reply = raw(exchange, route, {"uid": "C_EMPTY", "actid": "C_EMPTY"}, token).json()
        assert reply["stat"] == "Not_Ok" and reply["emsg"] == NO_DATA
    nifty = api.get_quotes("NSE", "26000")
    assert nifty["tsym"] == "Nifty 50" and float(nifty["lp"]) > 20000


# ---------------------------------------------------------------- official client: websocket


def test_official_client_websocket_receives_order_updates_and_touchline(exchange):
    api, _ = login(exchange, "C_WS")
    tsym = sym.option("NIFTY", "C", 26000)
    token = set_ltp(exchange, "NFO", tsym, 80.0)["token"]
    opened, updates, ticks = threading.Event(), [], []
    api.start_websocket(order_update_callback=updates.append, subscribe_callback=ticks.append,
                        socket_open_callback=opened.set)
    try:
        assert opened.wait(5)
        api.subscribe_orders()
        api.subscribe(f"NFO|{token}")
        tk = wait_until(lambda: next((m for m in ticks if m["t"] == "tk"), None), what="tk")
        assert (tk["e"], tk["tk"], tk["ts"], tk["lp"], tk["ls"], tk["ti"]) == ("NFO", token, tsym, "80.00", "65",
                                                                                  "0.05")
        set_ltp(exchange, "NFO", tsym, 81.5)
        tf = wait_until(lambda: next((m for m in ticks if m["t"] == "tf" and m.get("lp") == "81.50"), None),
                        what="tf")
        assert tf["e"] == "NFO" and tf["tk"] == token
        number = api.place_order("B", "M", "NFO", tsym, 65, 0, "MKT", remarks="cmd-ws")["norenordno"]
        fill = wait_until(lambda: next((m for m in updates if m.get("reporttype") == "Fill"), None), what="om Fill")
        assert (fill["norenordno"], fill["status"], fill["remarks"], fill["flqty"], fill["flprc"]) == (
            number, "COMPLETE", "cmd-ws", "65", "81.50")
        for name in ("uid", "actid", "exch", "tsym", "qty", "prc", "prd", "trantype", "prctyp", "ret",
                     "fillshares", "avgprc", "flid", "fltm", "exch_tm"):
            assert name in fill, name
        assert [m["reporttype"] for m in updates] == ["NewAck", "PendingNew", "New", "Fill"]
        api.unsubscribe(f"NFO|{token}")
    finally:
        # The official close_websocket() can stall 10 s: it reads the close reply on this thread while its
        # dispatcher thread sits in select(timeout=10) (a race inside the client). Let it finish in the background.
        threading.Thread(target=api.close_websocket, daemon=True).start()


def test_websocket_heartbeats_and_bad_session(exchange):
    _, token = login(exchange, "C_HB")
    ws = open_socket(exchange, "C_HB", token)
    try:
        ws.ping('{"t":"h"}')
        frame = ws.recv_data_frame(control_frame=True)[1]
        assert frame.opcode == websocket.ABNF.OPCODE_PONG and frame.data == b'{"t":"h"}'
        ws.send('{"t":"h"}')
        ws.send(json.dumps({"t": "o", "actid": "C_HB"}))
        assert json.loads(ws.recv()) == {"t": "ok"}
    finally:
        ws.close()
    bad = websocket.create_connection(exchange.ws_url, timeout=5)
    try:
        bad.send(json.dumps({"t": "c", "uid": "C_HB", "actid": "C_HB", "susertoken": "nope", "source": "API"}))
        reply = json.loads(bad.recv())
        assert reply["t"] == "ck" and reply["s"] != "OK"
    finally:
        bad.close()


def test_oauth_access_token_works_for_rest_and_websocket(exchange):
    checksum = hashlib.sha256(b"client" + b"secret" + b"C_OAUTH").hexdigest()
    reply = requests.post(exchange.base_url + "/NorenWClientAPI/GenAcsTok",
                          data="jData=" + json.dumps({"code": "C_OAUTH", "checksum": checksum}), timeout=5).json()
    for name in ("access_token", "refresh_token", "susertoken", "actid", "expires_in"):
        assert name in reply, name
    assert reply["actid"] == "C_OAUTH"
    bearer = {"Authorization": f"Bearer {reply['access_token']}"}
    details = requests.post(exchange.base_url + "/NorenWClientAPI/UserDetails",
                            data='jData={"uid":"C_OAUTH"}', headers=bearer, timeout=5).json()
    assert details["stat"] == "Ok" and details["actid"] == "C_OAUTH"
    ws = websocket.create_connection(exchange.base_url.replace("http", "ws") + "/NorenWSAPI/", timeout=5)
    try:
        ws.send(json.dumps({"t": "a", "uid": "C_OAUTH", "actid": "C_OAUTH", "source": "API",
                            "accesstoken": reply["access_token"]}))
        assert json.loads(ws.recv())["s"] == "OK"
        placed = requests.post(exchange.base_url + "/NorenWClientAPI/PlaceOrder", headers=bearer, timeout=5, data=(
            'jData={"uid":"C_OAUTH","actid":"C_OAUTH","exch":"NSE","tsym":"SBIN-EQ","qty":"1","prc":"1",'
            '"prd":"C","trantype":"B","prctyp":"LMT","ret":"DAY","remarks":"cmd-oauth"}')).json()
        first = json.loads(ws.recv())
        assert first["t"] == "om" and first["norenordno"] == placed["norenordno"] and first["remarks"] == "cmd-oauth"
    finally:
        ws.close()


def test_quickauth_checks_passwords_of_configured_users():
    with PaperExchange(PaperConfig(users={"U9": "secret"}), port=0) as strict:
        def quick_auth(uid: str, password: str) -> dict:
            data = {"uid": uid, "pwd": hashlib.sha256(password.encode()).hexdigest(), "factor2": "1", "source": "API"}
            return requests.post(strict.rest_url + "/QuickAuth", data="jData=" + json.dumps(data), timeout=5).json()

        assert quick_auth("U9", "wrong") == {**quick_auth("U9", "wrong"), "stat": "Not_Ok",
                                             "emsg": "Invalid Input : Wrong Password"}
        assert quick_auth("U9", "secret")["stat"] == "Ok"
        assert quick_auth("ANYONE", "whatever")["stat"] == "Ok"


# ---------------------------------------------------------------- wire details


def test_routes_match_by_last_path_segment(exchange):
    _, token = login(exchange, "C_PATH")
    body = "jData=" + json.dumps({"uid": "C_PATH"}) + f"&jKey={token}"
    for path in ("/NorenWClientTP//UserDetails", "/NorenWClientAPI/UserDetails", "/UserDetails"):
        assert requests.post(exchange.base_url + path, data=body, timeout=5).json()["stat"] == "Ok", path
    unknown = requests.post(exchange.base_url + "/NorenWClientTP/NoSuchRoute", data=body, timeout=5).json()
    assert unknown["stat"] == "Not_Ok" and unknown["emsg"] and REQUEST_TIME.match(unknown["request_time"])


def test_body_parsing_with_and_without_content_type(exchange):
    _, token = login(exchange, "C_BODY")
    body = "jData=" + json.dumps({"uid": "C_BODY"}) + f"&jKey={token}"
    prepared = requests.Request("POST", exchange.rest_url + "/UserDetails", data=body).prepare()
    assert "Content-Type" not in prepared.headers
    with requests.Session() as session:
        assert session.send(prepared, timeout=5).json()["stat"] == "Ok"
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert requests.post(exchange.rest_url + "/UserDetails", data=body, headers=form, timeout=5).json()["stat"] == "Ok"
    encoded = requests.post(exchange.rest_url + "/UserDetails", timeout=5,
                            data={"jData": json.dumps({"uid": "C_BODY"}), "jKey": token}).json()
    assert encoded["stat"] == "Ok"
    missing = requests.post(exchange.rest_url + "/UserDetails", data="nothing", timeout=5).json()
    assert missing["stat"] == "Not_Ok"


def test_unknown_token_is_session_expired(exchange):
    reply = raw(exchange, "OrderBook", {"uid": "C_X"}, "not-a-token")
    assert reply.status_code == 200
    assert reply.json()["stat"] == "Not_Ok" and reply.json()["emsg"] == SESSION_EXPIRED
    assert REQUEST_TIME.match(reply.json()["request_time"])


# ---------------------------------------------------------------- control routes and faults


def test_control_routes(exchange):
    base = exchange.base_url
    assert requests.get(base + "/paper/health", timeout=5).json() == {"ok": True}
    state = requests.get(base + "/paper/faults", timeout=5).json()
    assert (state["latency_ms"], state["hang_place_orders"], state["http_500"]) == (0, 0, 0)
    assert requests.post(base + "/paper/faults", json={"nonsense": 1}, timeout=5).status_code == 400
    assert requests.post(base + "/paper/ltp", json={"exch": "NSE"}, timeout=5).status_code == 400
    assert set_ltp(exchange, "NSE", "M%26M-EQ", 101.03)["lp"] == "101.05"
    assert isinstance(paper_orders(exchange), list)


def test_latency_fault_delays_every_rest_reply(exchange):
    _, token = login(exchange, "C_LAT")
    requests.post(exchange.base_url + "/paper/faults", json={"latency_ms": 300}, timeout=5)
    started = time.monotonic()
    assert raw(exchange, "UserDetails", {"uid": "C_LAT"}, token).json()["stat"] == "Ok"
    assert time.monotonic() - started >= 0.3


def test_hung_place_order_times_out_but_the_order_exists(exchange):
    api, token = login(exchange, "C_HANG")
    set_ltp(exchange, "NSE", "HANG-EQ", 50.0)
    requests.post(exchange.base_url + "/paper/faults", json={"hang_place_orders": 1}, timeout=5)
    body = {"uid": "C_HANG", "actid": "C_HANG", "exch": "NSE", "tsym": "HANG-EQ", "qty": "1", "prc": "0",
            "prd": "C", "trantype": "B", "prctyp": "MKT", "ret": "DAY", "remarks": "cmd-hang"}
    with pytest.raises(requests.exceptions.ReadTimeout):
        raw(exchange, "PlaceOrder", body, token, timeout=0.5)
    order = wait_until(lambda: next((o for o in paper_orders(exchange)
                                     if o["remarks"] == "cmd-hang" and o["status"] == "COMPLETE"), None),
                       what="hung order filled")
    assert order["uid"] == "C_HANG" and order["fillshares"] == "1"
    wait_until(lambda: requests.get(exchange.base_url + "/paper/faults", timeout=5).json()["held_replies"] == 0,
               what="held reply released after the client gave up")
    assert raw(exchange, "PlaceOrder", {**body, "remarks": "cmd-after"}, token).json()["stat"] == "Ok"


def test_http_500_fault_answers_without_processing(exchange):
    _, token = login(exchange, "C_500")
    requests.post(exchange.base_url + "/paper/faults", json={"http_500": 2}, timeout=5)
    body = {"uid": "C_500", "actid": "C_500", "exch": "NSE", "tsym": "SBIN-EQ", "qty": "1", "prc": "1",
            "prd": "C", "trantype": "B", "prctyp": "LMT", "ret": "DAY", "remarks": "cmd-500"}
    assert raw(exchange, "PlaceOrder", body, token).status_code == 500
    assert raw(exchange, "UserDetails", {"uid": "C_500"}, token).status_code == 500
    assert raw(exchange, "UserDetails", {"uid": "C_500"}, token).json()["stat"] == "Ok"
    assert not [o for o in paper_orders(exchange) if o["remarks"] == "cmd-500"]


def test_expire_sessions_fault_invalidates_tokens_and_closes_their_sockets(exchange):
    _, token = login(exchange, "C_EXP")
    ws = open_socket(exchange, "C_EXP", token)
    try:
        requests.post(exchange.base_url + "/paper/faults", json={"expire_sessions": True}, timeout=5)
        reply = raw(exchange, "OrderBook", {"uid": "C_EXP"}, token).json()
        assert reply["stat"] == "Not_Ok" and reply["emsg"].startswith("Session Expired")
        assert socket_closes(ws)
    finally:
        ws.close()
    _, fresh = login(exchange, "C_EXP")
    assert raw(exchange, "UserDetails", {"uid": "C_EXP"}, fresh).json()["stat"] == "Ok"


def test_drop_websockets_fault_closes_every_socket(exchange):
    _, token = login(exchange, "C_DROP")
    sockets = [open_socket(exchange, "C_DROP", token), websocket.create_connection(exchange.ws_url, timeout=5)]
    try:
        requests.post(exchange.base_url + "/paper/faults", json={"drop_websockets": True}, timeout=5)
        assert all(socket_closes(ws) for ws in sockets)
    finally:
        for ws in sockets:
            ws.close()
    again = open_socket(exchange, "C_DROP", token)  # the session itself is still valid
    again.close()
