"""Issue 3 acceptance scenarios: the whole service, in-process, against the real paper exchange.

Every test starts a System (real actors, real SQLite file under tmp_path) against a paper exchange on
loopback (fixtures in conftest.py). Alerts go through the real ingress code (`inject_alert`) or over real
HTTP; waits poll a condition against a deadline; there are no fixed sleeps and no mocks.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyotp
import pytest
import requests

from messages.commands import BrokerOrderReport
from runtime.noren.rest import NorenRestClient
from storage.models import Alert, Order
from tests.conftest import SECRET, alert, paper_faults, paper_orders, set_ltp
from tests import symbols as sym
from tests.symbols import NIFTY_CE, NIFTY_PE

SYM = NIFTY_CE
PUT = NIFTY_PE
BAD = "BADSYM-EQ"
TERMINAL = ("EXECUTED", "FAILED")
FAR_BELOW = 1.0  # NIFTY option prices on the paper exchange are ~50..500: a BUY LIMIT at 1.0 rests


# ---- helpers --------------------------------------------------------------------------------------


def accepted(system, payload, headers=None) -> list[dict]:
    """Send an alert through the ingress; it must be accepted (202). Returns the per-leg answer."""
    status, body = system.inject_alert(payload, headers)
    assert status == 202, (status, body)
    return body["orders"]


def one_leg(system, payload) -> str:
    orders = accepted(system, payload)
    assert len(orders) == 1, orders
    return orders[0]["command_id"]


def at_paper(exchange, command_id: str) -> list[dict]:
    """The paper exchange's orders carrying this command_id as remarks."""
    return [o for o in paper_orders(exchange) if o.get("remarks") == command_id]


def statuses(order: dict) -> list[str]:
    return [e["to_status"] for e in order["events"]]


def notes_for(system, command_id: str, kind: str | None = None) -> list[dict]:
    return [n for n in system.notifications()["recent"]
            if n["command_id"] == command_id and (kind is None or n["kind"] == kind)]


def wait_note(system, command_id: str, kind: str, timeout: float = 5.0) -> dict:
    return system.wait_until(lambda: notes_for(system, command_id, kind), timeout,
                             f"a {kind!r} notification for {command_id}")[0]


def wait_broker_id(system, command_id: str, timeout: float = 10.0) -> dict:
    return system.wait_until(
        lambda: (o := system.order(command_id)) and o["broker_order_id"] and o,
        timeout, f"{command_id} to get a broker order id")


def broker_client(exchange, uid: str = "TEST1") -> NorenRestClient:
    """Our own NorenOMS client logged in to the paper exchange as the service's account (same book)."""
    client = NorenRestClient(exchange.rest_url)
    client.login_quickauth(uid, "any-password", pyotp.random_base32(), "VC", "api-secret", "test-imei")
    return client


def paper_netqty(exchange, tsym: str, prd: str = "M") -> int:
    client = broker_client(exchange)
    try:
        return sum(p.netqty for p in client.position_book() if p.tsym == tsym and p.prd == prd)
    finally:
        client.close()


def limit_far_below(**overrides) -> dict:
    fields = {"order_type": "LIMIT", "price": FAR_BELOW}
    fields.update(overrides)
    return alert(**fields)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FakeTelegram:
    """A tiny Telegram Bot API: records every POST, answers 200 {"ok": true}."""

    def __init__(self):
        self.requests: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {"_raw": raw.decode("utf-8", "replace")}
                with outer.lock:
                    outer.requests.append((self.path, body))
                data = b'{"ok":true}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def received(self) -> list[tuple[str, dict]]:
        with self.lock:
            return list(self.requests)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def telegram():
    with FakeTelegram() as fake:
        yield fake


# ---- 1. ENTRY, one MARKET leg ------------------------------------------------------------------------

TOKEN = "123456:T0K-never-in-a-log"


def test_entry_market_leg_executes_and_notifies_telegram(make_system, paper, telegram):
    system = make_system(telegram={"token": TOKEN, "chat_id": "42", "api_url": telegram.url})
    status, body = system.inject_alert(alert(alert_id="tv-1"))
    assert status == 202 and body["alert_id"] == "tv-1", body
    orders = body["orders"]
    assert orders[0]["status"] == "CREATED" and orders[0]["tradingsymbol"] == SYM
    cid = orders[0]["command_id"]
    registered = system.order(cid)  # the 202 leaves only once the leg is durably registered
    assert registered is not None and registered["events"][0]["to_status"] == "CREATED"

    order = system.wait_for_status(cid, "EXECUTED")
    assert order["filled_qty"] == order["quantity"] == 65
    assert order["avg_price"] and order["avg_price"] > 0
    assert statuses(order) == ["CREATED", "SENT_TO_BROKER", "EXECUTED"]
    froms = [e["from_status"] for e in order["events"]]
    assert froms == [None, "CREATED", "SENT_TO_BROKER"]
    ats = [e["at"] for e in order["events"]]
    assert ats == sorted(ats)

    sent = at_paper(paper, cid)
    assert len(sent) == 1
    assert order["broker_order_id"] == sent[0]["norenordno"]
    assert (sent[0]["trantype"], sent[0]["prctyp"], sent[0]["prd"], sent[0]["qty"]) == ("B", "LMT", "M", "65")  # market protection
    assert sent[0]["status"] == "COMPLETE"

    wait_note(system, cid, "filled")
    path = f"/bot{TOKEN}/sendMessage"
    fills = system.wait_until(
        lambda: [b for p, b in telegram.received() if p == path and "Filled" in str(b.get("text"))],
        5, "the fill message at the fake Telegram")
    assert str(fills[0]["chat_id"]) == "42"
    assert SYM in fills[0]["text"] and "65" in fills[0]["text"]
    assert system.notifications()["delivered"] >= 1

    alert_rows = [dict(r.__data__) for r in Alert.select()]
    assert alert_rows and all(TOKEN not in json.dumps(r, default=str) for r in alert_rows)
    assert all(SECRET not in (r["body"] or "") for r in alert_rows)
    data_dir = system.data_dir
    system.stop()  # flushes the enqueued log sinks
    logs = list(Path(data_dir, "logs").glob("*.jsonl"))
    assert logs, "the service wrote no log files"
    for log in logs:
        text = log.read_text(encoding="utf-8")
        assert "T0K" not in text, f"{log.name} contains the Telegram token"
        assert SECRET not in text, f"{log.name} contains the webhook secret"


# ---- 2. kill switch -----------------------------------------------------------------------------------

def test_kill_switch_blocks_entries_not_exits_and_resume_restores(make_system, paper):
    system = make_system()
    held = one_leg(system, alert(alert_id="before-halt"))
    system.wait_for_status(held, "EXECUTED")

    reply = requests.post(f"{system.url}/risk/halt", headers=system.operator_headers, json={"secret_key": SECRET}, timeout=5)
    assert reply.status_code == 200 and reply.json()["state"] == "HALTED"

    blocked = one_leg(system, alert(strategy="S2", alert_id="during-halt"))
    order = system.wait_for_status(blocked, TERMINAL)
    assert order["status"] == "FAILED" and order["tag"].startswith("RISK_BLOCKED:"), order
    assert statuses(order) == ["CREATED", "FAILED"]
    assert at_paper(paper, blocked) == []
    wait_note(system, blocked, "blocked")

    exit_cid = one_leg(system, alert(execution_type="EXIT", alert_id="exit-during-halt", direction="SELL"))
    exit_order = system.wait_for_status(exit_cid, TERMINAL)
    assert exit_order["status"] == "EXECUTED", exit_order
    assert exit_order["side"] == "SELL" and exit_order["filled_qty"] == 65
    assert len(at_paper(paper, exit_cid)) == 1

    reply = requests.post(f"{system.url}/risk/resume", headers=system.operator_headers, json={"secret_key": SECRET}, timeout=5)
    assert reply.status_code == 200 and reply.json()["state"] == "ACTIVE"
    assert requests.get(f"{system.url}/risk", headers=system.operator_headers, timeout=5).json()["state"] == "ACTIVE"
    after = one_leg(system, alert(strategy="S2", alert_id="after-resume"))
    assert system.wait_for_status(after, TERMINAL)["status"] == "EXECUTED"
    assert len(at_paper(paper, after)) == 1


def test_kill_switch_survives_a_restart(make_system, paper, tmp_path):
    data_dir = tmp_path / "persisted"
    system = make_system(data_dir=data_dir)
    assert requests.post(f"{system.url}/risk/halt", headers=system.operator_headers, json={"secret_key": SECRET}, timeout=5).json()["state"] == "HALTED"
    system.stop()
    system = make_system(data_dir=data_dir)
    assert requests.get(f"{system.url}/risk", headers=system.operator_headers, timeout=5).json()["state"] == "HALTED"
    cid = one_leg(system, alert(alert_id="after-restart"))
    order = system.wait_for_status(cid, TERMINAL)
    assert order["status"] == "FAILED" and order["tag"].startswith("RISK_BLOCKED:")
    assert paper_orders(paper) == []


# ---- 3. duplicate and position guards -------------------------------------------------------------

def test_second_entry_while_first_open_is_duplicate_then_position_guard(make_system, paper):
    system = make_system()
    first = one_leg(system, limit_far_below(alert_id="first"))
    open_order = wait_broker_id(system, first)
    assert open_order["status"] == "SENT_TO_BROKER"

    second = one_leg(system, alert(alert_id="second"))
    order = system.wait_for_status(second, TERMINAL)
    assert (order["status"], order["tag"]) == ("FAILED", "DUPLICATE_BLOCKED:OPEN_ORDER_EXISTS")
    assert at_paper(paper, second) == []
    assert system.order(first)["status"] == "SENT_TO_BROKER"
    wait_note(system, second, "blocked")

    set_ltp(paper, "NFO", SYM, 0.9)  # the resting BUY LIMIT at 1.0 now fills
    filled = system.wait_for_status(first, TERMINAL)
    assert filled["status"] == "EXECUTED" and filled["filled_qty"] == 65

    third = one_leg(system, alert(alert_id="third"))
    order = system.wait_for_status(third, TERMINAL)
    assert (order["status"], order["tag"]) == ("FAILED", "GUARD_BLOCKED:STRATEGY_HAS_POSITION")
    assert at_paper(paper, third) == []
    assert len(paper_orders(paper)) == 1


def test_entry_after_fill_is_blocked_for_a_different_symbol_too(make_system, paper):
    system = make_system()
    first = one_leg(system, alert(alert_id="e1"))
    system.wait_for_status(first, "EXECUTED")
    other = one_leg(system, alert(alert_id="e2", tradingsymbol=PUT))
    order = system.wait_for_status(other, TERMINAL)
    assert (order["status"], order["tag"]) == ("FAILED", "GUARD_BLOCKED:STRATEGY_HAS_POSITION")
    assert at_paper(paper, other) == []


# ---- 4. broker rejection ------------------------------------------------------------------------------

def test_rejected_symbol_fails_with_broker_reason_and_notifies(make_system, paper_factory):
    exchange = paper_factory(reject_symbols=[BAD])
    system = make_system(exchange)
    cid = one_leg(system, alert(alert_id="bad", exchange="NSE", tradingsymbol=BAD, qty=1, product_type="CNC"))
    order = system.wait_for_status(cid, TERMINAL)
    sent = at_paper(exchange, cid)
    assert len(sent) == 1 and sent[0]["status"] == "REJECTED" and sent[0]["rejreason"]
    assert order["status"] == "FAILED"
    assert order["tag"] == f"BROKER_REJECTED:{sent[0]['rejreason']}"
    assert order["filled_qty"] == 0
    note = wait_note(system, cid, "rejected")
    assert "BROKER_REJECTED" in note["text"] and BAD in note["text"]


# ---- 5. EXIT resolution -----------------------------------------------------------------------------------

def test_exit_closes_the_whole_position(make_system, paper):
    system = make_system()
    entry = one_leg(system, alert(alert_id="in"))
    system.wait_for_status(entry, "EXECUTED")
    assert paper_netqty(paper, SYM) == 65

    exit_cid = one_leg(system, alert(execution_type="EXIT", alert_id="out", direction="SELL", qty=65))
    order = system.wait_for_status(exit_cid, TERMINAL)
    assert order["status"] == "EXECUTED", order
    assert (order["side"], order["product"], order["quantity"], order["filled_qty"]) == ("SELL", "NRML", 65, 65)
    sent = at_paper(paper, exit_cid)
    assert len(sent) == 1 and (sent[0]["trantype"], sent[0]["prd"], sent[0]["qty"]) == ("S", "M", "65")
    assert paper_netqty(paper, SYM) == 0
    # closed today: still listed, with net 0
    assert [(p["symbol"], p["net_qty"]) for p in requests.get(f"{system.url}/positions", headers=system.operator_headers, timeout=5).json()] == [
        (SYM, 0)]


def test_exit_leg_is_resolved_against_the_held_position(make_system, paper):
    """EXIT side, qty and product come from what the strategy holds, not from the alert's leg."""
    system = make_system()
    entry = one_leg(system, alert(alert_id="in", product_type="MIS"))
    system.wait_for_status(entry, "EXECUTED")
    exit_cid = one_leg(system, alert(execution_type="EXIT", alert_id="out", direction="BUY", qty=1000,
                                     product_type="NRML"))
    order = system.wait_for_status(exit_cid, TERMINAL)
    assert order["status"] == "EXECUTED", order
    assert (order["side"], order["product"], order["quantity"]) == ("SELL", "MIS", 65)
    assert paper_netqty(paper, SYM, "I") == 0


def test_exit_without_position_is_guard_blocked(make_system, paper):
    system = make_system()
    cid = one_leg(system, alert(execution_type="EXIT", alert_id="nothing-held", direction="SELL"))
    order = system.wait_for_status(cid, TERMINAL)
    assert (order["status"], order["tag"]) == ("FAILED", "GUARD_BLOCKED:NO_POSITION")
    assert paper_orders(paper) == []
    wait_note(system, cid, "blocked")


def test_exit_with_smaller_qty_exits_only_that_qty(make_system, paper):
    system = make_system()
    entry = one_leg(system, alert(alert_id="in", qty=130))
    system.wait_for_status(entry, "EXECUTED")
    exit_cid = one_leg(system, alert(execution_type="EXIT", alert_id="half", direction="SELL", qty=65))
    order = system.wait_for_status(exit_cid, TERMINAL)
    assert order["status"] == "EXECUTED" and order["quantity"] == order["filled_qty"] == 65
    assert paper_netqty(paper, SYM) == 65
    positions = requests.get(f"{system.url}/positions", headers=system.operator_headers, timeout=5).json()
    assert [(p["strategy_name"], p["symbol"], p["net_qty"]) for p in positions] == [("S1", SYM, 65)]


# ---- 6. four legs in one alert ----------------------------------------------------------------------------

def test_four_leg_entry_with_an_invalid_leg_registers_atomically_and_sends_nothing(make_system, paper_factory):
    """A spread never goes out one-legged: one invalid ENTRY leg fails every leg of the alert."""
    exchange = paper_factory(reject_symbols=[BAD])
    set_ltp(exchange, "NFO", PUT, 100.0)
    system = make_system(exchange)
    legs = [
        {"tradingsymbol": SYM, "direction": "BUY", "qty": 65, "order_type": "MARKET", "product_type": "NRML"},
        {"tradingsymbol": PUT, "direction": "BUY", "qty": 65, "order_type": "LIMIT", "price": 110.0,
         "product_type": "NRML"},
        {"tradingsymbol": BAD, "direction": "BUY", "qty": 1, "order_type": "MARKET", "product_type": "CNC",
         "exchange": "NSE"},
        {"tradingsymbol": sym.option("NIFTY", "C", 25800), "direction": "BUY", "qty": 0, "order_type": "MARKET",
         "product_type": "NRML"},
    ]
    answer = accepted(system, alert(legs=legs, alert_id="four"))
    assert [o["tradingsymbol"] for o in answer] == [SYM, PUT, BAD, sym.option("NIFTY", "C", 25800)]
    assert answer[3]["status"] == "FAILED" and answer[3]["tag"] == "VALIDATION_FAILED:QTY_NOT_POSITIVE"
    assert [(o["status"], o["tag"]) for o in answer[:3]] == [("FAILED", "VALIDATION_FAILED:OTHER_LEG_BLOCKED")] * 3

    rows = system.orders(strategy="S1")
    assert len(rows) == 4
    assert len({r["created_at"] for r in rows}) == 1, "legs were not registered in one transaction"
    assert {r["alert_id"] for r in rows} == {"four"}
    assert len({r["alert_key"] for r in rows}) == 1
    assert sorted(r["leg_index"] for r in rows) == [0, 1, 2, 3]
    for o in answer:
        assert statuses(system.order(o["command_id"])) == ["FAILED"]
        assert at_paper(exchange, o["command_id"]) == []


def test_three_leg_entry_whose_last_leg_the_broker_rejects_is_reported_one_legged(make_system, paper_factory):
    exchange = paper_factory(reject_symbols=[BAD])
    set_ltp(exchange, "NFO", PUT, 100.0)
    system = make_system(exchange)
    legs = [
        {"tradingsymbol": SYM, "direction": "BUY", "qty": 65, "order_type": "MARKET", "product_type": "NRML"},
        {"tradingsymbol": PUT, "direction": "BUY", "qty": 65, "order_type": "LIMIT", "price": 110.0,
         "product_type": "NRML"},
        {"tradingsymbol": BAD, "direction": "BUY", "qty": 1, "order_type": "MARKET", "product_type": "CNC",
         "exchange": "NSE"},
    ]
    answer = accepted(system, alert(legs=legs, alert_id="three"))
    final = [system.wait_for_status(o["command_id"], TERMINAL) for o in answer]
    market, limit, rejected = final
    assert market["status"] == "EXECUTED" and market["filled_qty"] == 65
    assert limit["status"] == "EXECUTED" and limit["filled_qty"] == 65 and limit["avg_price"] == pytest.approx(100.0)
    assert rejected["status"] == "FAILED" and rejected["tag"].startswith("BROKER_REJECTED:")
    note = system.wait_until(lambda: [n for n in system.notifications()["recent"]
                                      if "ONE-LEGGED" in n["text"] and "three" in n["text"]], 10,
                             "a one-legged notification")[0]
    assert BAD in note["text"] and SYM in note["text"] and PUT in note["text"]
    diagnostics = requests.get(f"{system.url}/diagnostics", headers=system.operator_headers, timeout=5).json()
    [spread] = [d for d in diagnostics["one_legged"] if d["alert_id"] == "three"]
    assert {leg["symbol"] for leg in spread["failed"]} == {BAD}
    assert {leg["symbol"] for leg in spread["went"]} == {SYM, PUT}


# ---- 7. fifty identical alerts at once --------------------------------------------------------------------

def test_fifty_concurrent_identical_entries_send_exactly_one(make_system, paper):
    system = make_system(risk={"max_entries_per_second": 1000, "max_entries_per_minute": 10000})
    payloads = [limit_far_below(strategy="BURST", alert_id=f"burst-{i}") for i in range(50)]
    with ThreadPoolExecutor(max_workers=50) as pool:
        replies = list(pool.map(lambda p: requests.post(system.url + "/webhook", json=p, timeout=10), payloads))
    assert [r.status_code for r in replies] == [202] * 50
    cids = {r.json()["orders"][0]["command_id"] for r in replies}
    assert len(cids) == 50

    def settled():
        rows = system.orders(strategy="BURST")
        done = [r for r in rows if r["status"] == "FAILED" or r["broker_order_id"]]
        return rows if len(done) == 50 else None

    rows = system.wait_until(settled, 15, "all 50 orders to settle")
    assert {r["command_id"] for r in rows} == cids
    sent = [o for o in paper_orders(paper) if o.get("remarks") in cids]
    assert len(sent) == 1, f"{len(sent)} orders reached the exchange"
    winner = [r for r in rows if r["status"] != "FAILED"]
    assert len(winner) == 1 and winner[0]["command_id"] == sent[0]["remarks"]
    assert winner[0]["status"] == "SENT_TO_BROKER"
    tags = [r["tag"] for r in rows if r["status"] == "FAILED"]
    assert tags == ["DUPLICATE_BLOCKED:OPEN_ORDER_EXISTS"] * 49


# ---- 8. webhook contract ----------------------------------------------------------------------------------

def wait_alert_rows(system, n: int, timeout: float = 5.0) -> list[Alert]:
    return system.wait_until(lambda: (rows := list(Alert.select().order_by(Alert.id))) and len(rows) >= n and rows,
                             timeout, f"{n} alerts rows")


def test_same_alert_id_twice_replays_the_first_answer(make_system, paper):
    system = make_system()
    payload = alert(alert_id="tv-dup")
    first_status, first = system.inject_alert(payload)
    second_status, second = system.inject_alert(payload)
    assert first_status == 202 and second_status == 200
    assert second == first
    over_http = requests.post(system.url + "/webhook", json=payload, timeout=5)
    assert over_http.status_code == 200 and over_http.json() == first
    cid = first["orders"][0]["command_id"]
    system.wait_for_status(cid, "EXECUTED")
    assert [r["command_id"] for r in system.orders()] == [cid]
    assert len(paper_orders(paper)) == 1
    outcomes = [(r.alert_id, r.outcome, r.http_status) for r in wait_alert_rows(system, 3)]
    assert outcomes == [("tv-dup", "accepted", 202), ("tv-dup", "duplicate", 200), ("tv-dup", "duplicate", 200)]
    assert all(SECRET not in (r.body or "") + (r.response or "") for r in Alert.select())


def test_rejected_requests_write_no_order_and_are_audited_without_the_secret(make_system, paper):
    system = make_system(service={"max_body_bytes": 4096})
    wrong_secret = "wrong-secret-value"

    status, body = system.inject_alert(b'{"secret_key": "' + SECRET.encode() + b'", "legs": [')
    assert status == 400
    assert "JSON" in json.dumps(body)
    assert body.get("errors")

    status, body = system.inject_alert({"secret_key": SECRET, "strategy_name": "S1", "legs": []})
    assert status == 400
    problems = " ".join(body["errors"])
    assert "execution_type" in problems and "legs" in problems

    status, body = system.inject_alert(alert(secret=wrong_secret, alert_id="bad-secret"))
    assert status == 401

    padded = alert(alert_id="too-big")
    padded["padding"] = "x" * 5000
    status, body = system.inject_alert(padded)
    assert status == 413
    reply = requests.post(system.url + "/webhook", json=padded, timeout=5)
    assert reply.status_code == 413

    rows = wait_alert_rows(system, 5)
    assert [(r.outcome, r.http_status) for r in rows] == [
        ("invalid", 400), ("invalid", 400), ("unauthorized", 401), ("too_large", 413), ("too_large", 413)]
    for row in rows:
        text = json.dumps(row.__data__, default=str)
        assert SECRET not in text and wrong_secret not in text, row.__data__
    assert "JSON" in (rows[0].error or "")
    assert Order.select().count() == 0
    assert paper_orders(paper) == []


def test_a_much_larger_body_is_still_audited(make_system):
    system = make_system(service={"max_body_bytes": 4096})
    padded = alert(alert_id="huge")
    padded["padding"] = "x" * 40_000
    reply = requests.post(system.url + "/webhook", json=padded, timeout=5)
    assert reply.status_code == 413
    rows = wait_alert_rows(system, 1, timeout=2)
    assert [(r.outcome, r.http_status) for r in rows] == [("too_large", 413)]


def test_x_signature_replaces_secret_key(make_system, paper):
    """X-Signature signs X-Timestamp, the path and the body (issue 13); a body-only signature is refused."""
    system = make_system()
    payload = alert(alert_id="signed")
    del payload["secret_key"]
    raw = json.dumps(payload).encode()
    stamp = str(int(time.time()))
    signature = hmac.new(SECRET.encode(), stamp.encode() + b"\n/webhook\n" + raw, hashlib.sha256).hexdigest()

    status, body = system.inject_alert(raw, {"X-Signature": "0" * 64, "X-Timestamp": stamp})
    assert status == 401
    status, body = system.inject_alert(raw, {"X-Signature": hmac.new(SECRET.encode(), raw,
                                                                     hashlib.sha256).hexdigest()})
    assert status == 401  # the old body-only signature
    status, body = system.inject_alert(raw, {"X-Signature": signature, "X-Timestamp": stamp})
    assert status == 202
    cid = body["orders"][0]["command_id"]
    assert system.wait_for_status(cid, TERMINAL)["status"] == "EXECUTED"

    payload2 = dict(payload, alert_id="signed-http")
    raw2 = json.dumps(payload2).encode()
    reply = requests.post(system.url + "/webhook", data=raw2, timeout=5, headers={
        "Content-Type": "application/json", "X-Timestamp": stamp,
        "X-Signature": hmac.new(SECRET.encode(), stamp.encode() + b"\n/webhook\n" + raw2,
                                hashlib.sha256).hexdigest()})
    assert reply.status_code == 202
    assert len(system.orders()) == 2


def test_a_zero_qty_entry_leg_fails_validation_and_holds_the_other_legs(make_system, paper):
    """The ENTRY legs of one alert go together or not at all (issue 10): the valid legs are refused with it."""
    system = make_system()
    legs = [
        {"tradingsymbol": SYM, "direction": "BUY", "qty": 65, "order_type": "MARKET", "product_type": "NRML"},
        {"tradingsymbol": PUT, "direction": "BUY", "qty": 0, "order_type": "MARKET", "product_type": "NRML"},
        {"tradingsymbol": sym.option("NIFTY", "C", 25800), "direction": "BUY", "qty": 65, "order_type": "LIMIT",
         "product_type": "NRML"},
    ]
    good, bad, no_price = accepted(system, alert(legs=legs, alert_id="zero"))
    assert bad["status"] == "FAILED" and bad["tag"] == "VALIDATION_FAILED:QTY_NOT_POSITIVE"
    assert no_price["status"] == "FAILED" and no_price["tag"] == "VALIDATION_FAILED:PRICE_REQUIRED"
    assert good["status"] == "FAILED" and good["tag"] == "VALIDATION_FAILED:OTHER_LEG_BLOCKED"
    assert system.order(good["command_id"])["status"] == "FAILED"
    assert paper_orders(paper) == []
    wait_note(system, bad["command_id"], "blocked")


def test_one_malformed_leg_rejects_the_whole_alert(make_system, paper):
    system = make_system()
    legs = [
        {"tradingsymbol": SYM, "direction": "BUY", "qty": 65, "order_type": "MARKET", "product_type": "NRML"},
        {"tradingsymbol": PUT, "direction": "SIDEWAYS", "qty": 65, "order_type": "MARKET", "product_type": "NRML"},
    ]
    status, body = system.inject_alert(alert(legs=legs, alert_id="shape"))
    assert status == 400
    assert any("legs.1" in e and "direction" in e for e in body["errors"]), body
    too_many = alert(legs=[dict(legs[0]) for _ in range(21)], alert_id="too-many")
    status, body = system.inject_alert(too_many)
    assert status == 400 and "legs" in " ".join(body["errors"])
    rows = wait_alert_rows(system, 2)
    assert [(r.outcome, r.http_status) for r in rows] == [("invalid", 400), ("invalid", 400)]
    assert rows[1].alert_id == "too-many" and "legs" in (rows[1].error or "")
    assert all(SECRET not in (r.body or "") for r in rows)
    assert Order.select().count() == 0
    assert paper_orders(paper) == []


def test_concurrent_replays_of_one_alert_id_register_once(make_system, paper):
    system = make_system()
    payload = alert(alert_id="same-id", order_type="LIMIT", price=FAR_BELOW)
    with ThreadPoolExecutor(max_workers=10) as pool:
        replies = list(pool.map(lambda _: requests.post(system.url + "/webhook", json=payload, timeout=10),
                                range(10)))
    codes = sorted(r.status_code for r in replies)
    assert codes == [200] * 9 + [202], codes
    bodies = {json.dumps(r.json(), sort_keys=True) for r in replies}
    assert len(bodies) == 1, "replays must carry the first answer"
    cid = replies[0].json()["orders"][0]["command_id"]
    wait_broker_id(system, cid)
    assert [r["command_id"] for r in system.orders()] == [cid]
    assert [o["remarks"] for o in paper_orders(paper)] == [cid]


def test_the_same_alert_id_with_other_content_is_a_new_alert_and_the_reuse_is_noted(make_system, paper):
    """Two strategies firing on one bar with TradingView's {{timenow}} as alert_id: both trade (issue 10)."""
    system = make_system()
    first_status, first = system.inject_alert(alert(alert_id="tv-9"))
    second_status, second = system.inject_alert(alert(strategy="S2", alert_id="tv-9", tradingsymbol=PUT))
    assert (first_status, second_status) == (202, 202) and second != first
    one, two = first["orders"][0]["command_id"], second["orders"][0]["command_id"]
    assert system.wait_for_status(one, TERMINAL)["status"] == "EXECUTED"
    assert system.wait_for_status(two, TERMINAL)["status"] == "EXECUTED"
    assert system.order(one)["alert_key"] != system.order(two)["alert_key"]
    assert sorted(o["tsym"] for o in paper_orders(paper)) == sorted([SYM, PUT])
    rows = list(Alert.select().where(Alert.alert_id == "tv-9").order_by(Alert.id))
    assert [r.outcome for r in rows] == ["accepted", "accepted"]
    assert rows[0].error is None and "reused with different content" in rows[1].error
    system.wait_until(lambda: [n for n in system.notifications()["recent"]
                               if "tv-9" in n["text"] and "used before" in n["text"]], 5, "a reuse notification")
    # A retry of either (the same content after parsing: aliases, case, "65" vs 65) is answered, not traded.
    retry_status, retry = system.inject_alert(alert(strategy="S2", alert_id="tv-9", tradingsymbol=PUT,
                                                    qty="65", order_type="MKT", direction="buy"))
    assert (retry_status, retry) == (200, second)
    assert len(system.orders()) == 2 and len(paper_orders(paper)) == 2


def test_an_exit_reusing_its_entrys_alert_id_is_traded(make_system, paper):
    system = make_system()
    _, entry = system.inject_alert(alert(alert_id="bar-1"))
    system.wait_for_status(entry["orders"][0]["command_id"], "EXECUTED")
    status, exit_ = system.inject_alert(alert(alert_id="bar-1", execution_type="EXIT", direction="SELL"))
    assert status == 202 and exit_ != entry
    order = system.wait_for_status(exit_["orders"][0]["command_id"], TERMINAL)
    assert (order["status"], order["side"], order["filled_qty"]) == ("EXECUTED", "SELL", 65)


def test_keys_are_case_insensitive_and_aliases_accepted(make_system, paper):
    system = make_system()
    payload = {"SECRET_KEY": SECRET, "Alert_ID": "ci-1", "Strategy_Name": "CI", "EXECUTION_TYPE": "entry",
               "Exchange": "nfo",
               "LEGS": [{"TradingSymbol": SYM, "Direction": "buy", "QTY": 65, "Order_Type": "MKT",
                         "Product_Type": "I"}]}
    cid = one_leg(system, payload)
    order = system.wait_for_status(cid, TERMINAL)
    assert order["status"] == "EXECUTED", order
    assert (order["alert_id"], order["strategy_name"], order["execution_type"], order["exchange"]) == (
        "ci-1", "CI", "ENTRY", "NFO")
    assert (order["side"], order["order_type"], order["product"]) == ("BUY", "MARKET", "MIS")
    sent = at_paper(paper, cid)
    assert (sent[0]["prctyp"], sent[0]["prd"], sent[0]["trantype"]) == ("LMT", "I", "B")  # market protection
    rows = wait_alert_rows(system, 1)
    assert SECRET not in (rows[0].body or "")


# ---- 9. broker cancellations and partial fills ------------------------------------------------------------

@pytest.mark.parametrize("spelling", ["CANCELED", "CANCELLED", "Canceled"])
def test_broker_cancel_spellings_end_failed_broker_canceled(make_system, paper, spelling):
    system = make_system()
    cid = one_leg(system, limit_far_below(alert_id=f"c-{spelling}"))
    bid = wait_broker_id(system, cid)["broker_order_id"]
    system.inject("watcher", BrokerOrderReport(remarks=cid, broker_order_id=bid, status=spelling, filled_qty=0,
                                               origin="inject"))
    order = system.wait_for_status(cid, TERMINAL)
    assert order["status"] == "FAILED" and order["tag"].startswith("BROKER_CANCELED"), order
    assert order["filled_qty"] == 0
    assert statuses(order) == ["CREATED", "SENT_TO_BROKER", "FAILED"]
    wait_note(system, cid, "cancelled")


def test_fills_after_a_cancel_report_win_broker_truth(make_system, paper):
    """A (wrong) cancel report makes the order FAILED; the exchange then fills it: FAILED -> EXECUTED."""
    system = make_system()
    cid = one_leg(system, limit_far_below(alert_id="lied-to"))
    bid = wait_broker_id(system, cid)["broker_order_id"]
    system.inject("watcher", BrokerOrderReport(remarks=cid, broker_order_id=bid, status="CANCELLED", filled_qty=0,
                                               origin="inject"))
    system.wait_for_status(cid, "FAILED")
    set_ltp(paper, "NFO", SYM, 0.9)  # the order is still live at the exchange: it fills now
    order = system.wait_for_status(cid, "EXECUTED")
    assert order["filled_qty"] == 65
    assert [(e["from_status"], e["to_status"]) for e in order["events"]][-2:] == [
        ("SENT_TO_BROKER", "FAILED"), ("FAILED", "EXECUTED")]
    positions = requests.get(f"{system.url}/positions", headers=system.operator_headers, timeout=5).json()
    assert [(p["symbol"], p["net_qty"]) for p in positions] == [(SYM, 65)]
    again = one_leg(system, alert(alert_id="after-truth"))
    assert system.wait_for_status(again, TERMINAL)["tag"] == "GUARD_BLOCKED:STRATEGY_HAS_POSITION"


def test_cancel_at_the_exchange_ends_failed_broker_canceled(make_system, paper):
    system = make_system()
    cid = one_leg(system, limit_far_below(alert_id="really-cancel"))
    bid = wait_broker_id(system, cid)["broker_order_id"]
    client = broker_client(paper)
    try:
        assert client.cancel_order(bid) == bid
    finally:
        client.close()
    order = system.wait_for_status(cid, TERMINAL)
    assert order["status"] == "FAILED" and order["tag"].startswith("BROKER_CANCELED"), order
    assert at_paper(paper, cid)[0]["status"] == "CANCELED"
    # the strategy holds nothing and has nothing open: a new entry goes through
    again = one_leg(system, alert(alert_id="after-cancel"))
    assert system.wait_for_status(again, TERMINAL)["status"] == "EXECUTED"


def test_cancel_after_a_partial_fill_keeps_the_fills(make_system, paper_factory):
    exchange = paper_factory(fill_slice_qty=50, fill_delay_ms=400)
    system = make_system(exchange)
    cid = one_leg(system, alert(alert_id="part-cancel", qty=130))
    order = system.wait_until(lambda: (o := system.order(cid)) and o["status"] in ("PARTIAL", *TERMINAL) and o,
                              10, f"{cid} to fill partly")
    assert order["status"] == "PARTIAL", order
    client = broker_client(exchange)
    try:
        client.cancel_order(order["broker_order_id"])
    finally:
        client.close()
    sent = system.wait_until(lambda: (o := at_paper(exchange, cid)) and o[0]["status"] == "CANCELED" and o[0],
                             5, "the cancel at the exchange")
    filled = int(sent["fillshares"])
    assert 0 < filled < 130
    order = system.wait_for_status(cid, TERMINAL)
    assert order["status"] == "FAILED" and order["tag"].startswith("BROKER_CANCELED"), order
    assert order["filled_qty"] == filled
    positions = requests.get(f"{system.url}/positions", headers=system.operator_headers, timeout=5).json()
    assert [(p["symbol"], p["net_qty"]) for p in positions] == [(SYM, filled)]
    exit_cid = one_leg(system, alert(execution_type="EXIT", alert_id="close-rest", direction="SELL", qty=130))
    exit_order = system.wait_for_status(exit_cid, TERMINAL)
    assert exit_order["status"] == "EXECUTED" and exit_order["quantity"] == filled
    assert paper_netqty(exchange, SYM) == 0


def test_partial_fills_show_partial_before_executed(make_system, paper_factory):
    exchange = paper_factory(fill_slice_qty=50, fill_delay_ms=150)
    system = make_system(exchange)
    cid = one_leg(system, alert(alert_id="partial", qty=130))
    seen: list[tuple[str, int]] = []

    def executed():
        order = system.order(cid)
        state = (order["status"], order["filled_qty"])
        if not seen or seen[-1] != state:
            seen.append(state)
        return order["status"] in TERMINAL

    system.wait_until(executed, 10, f"{cid} to finish")
    assert seen[-1] == ("EXECUTED", 130), seen
    partial_at = [i for i, (s, q) in enumerate(seen) if s == "PARTIAL" and 0 < q < 130]
    assert partial_at and partial_at[0] < len(seen) - 1, seen
    fills = [q for _, q in seen]
    assert fills == sorted(fills), f"filled_qty went backwards: {seen}"
    wait_note(system, cid, "partial")
    events = statuses(system.order(cid))
    assert events[:3] == ["CREATED", "SENT_TO_BROKER", "PARTIAL"], events
    assert events[-1] == "EXECUTED" and set(events[2:-1]) == {"PARTIAL"}, events


def test_unknown_place_outcome_is_resolved_by_remarks_and_never_resent(make_system, paper):
    """The exchange takes the order but never answers PlaceOrder: the order stays SENT_TO_BROKER, is not sent
    again, and the watcher finds it by remarks = command_id in the OrderBook."""
    paper_faults(paper, hang_place_orders=1)
    system = make_system()
    cid = one_leg(system, alert(alert_id="hung"))
    order = system.wait_for_status(cid, TERMINAL, timeout=10)
    sent = at_paper(paper, cid)
    assert len(sent) == 1 and len(paper_orders(paper)) == 1
    assert order["status"] == "EXECUTED" and order["broker_order_id"] == sent[0]["norenordno"], order
    assert order["filled_qty"] == 65


# ---- 10. Telegram down ------------------------------------------------------------------------------------

def test_orders_execute_while_telegram_is_down(make_system, paper):
    token = "999:T0K-down"
    system = make_system(telegram={"token": token, "chat_id": "42", "max_attempts": 2,
                                   "api_url": f"http://127.0.0.1:{free_port()}"})
    cid = one_leg(system, alert(alert_id="no-telegram"))
    order = system.wait_for_status(cid, TERMINAL, timeout=5)
    assert order["status"] == "EXECUTED"
    wait_note(system, cid, "filled")
    stats = system.wait_until(lambda: (s := system.notifications())["undelivered"] > 0 and s, 10,
                              "a notification to be given up")
    assert stats["delivered"] == 0
    data_dir = system.data_dir
    system.stop()
    for log in Path(data_dir, "logs").glob("*.jsonl"):
        text = log.read_text(encoding="utf-8")
        assert "T0K-down" not in text, f"{log.name} contains the Telegram token"
    service_log = Path(data_dir, "logs", "service.jsonl").read_text(encoding="utf-8")
    assert "undelivered" in service_log
