"""Broker login refusals (issue 11.2): a rejected credential stops `oms run` (exit 2); while running, a refused
re-login is retried at most 3 times in 15 minutes, orders fail SEND_FAILED:NOT_LOGGED_IN at once, one
notification goes out, and /health tells the truth. Real processes and the real paper exchange, whose
`[paper] users` check the password (changed at run time with POST /paper/users)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from actors.broker_session import LOGGED_IN, LOGGED_OUT, LOGGING_IN, SessionGate
from messages.broker import Relogin, ReloginDue
from runtime.noren.errors import (
    CredentialsRejected,
    LoginFailed,
    NotSent,
    classify_request_exception,
    error_from_emsg,
)
from runtime.system import StartRefused
from tests.conftest import alert, paper_faults, paper_orders
from tests.symbols import NIFTY_CE, NIFTY_PE

VENV_BIN = Path(sys.executable).parent
PASSWORD = "right-Pw-4711"
WRONG = "wrong-Pw-0815"


# ---- the taxonomy: which emsg is a rejected credential -------------------------------------------------

@pytest.mark.parametrize("emsg", ["Invalid Input : Wrong Password", "Invalid Input : Invalid OTP",
                                  "Invalid Input : Wrong TOTP", "Invalid Input : Invalid Vendor Code",
                                  "Invalid Input : Invalid App Key", "Invalid Input : User Blocked",
                                  "Invalid Input : Password Expired"])
def test_credential_emsgs_are_rejections(emsg):
    assert isinstance(error_from_emsg(emsg, "QuickAuth", login=True), CredentialsRejected)


def test_other_login_refusals_and_network_errors_are_not_credential_rejections():
    busy = error_from_emsg("Server is busy, try again", "QuickAuth", login=True)
    assert isinstance(busy, LoginFailed) and not isinstance(busy, CredentialsRejected)
    # Outside a login the same words are an ordinary rejection.
    assert not isinstance(error_from_emsg("Invalid Input : Wrong Password", "PlaceOrder"), LoginFailed)
    network = classify_request_exception(ConnectionRefusedError(111, "Connection refused"), "QuickAuth")
    assert isinstance(network, NotSent) and not isinstance(network, LoginFailed)


# ---- the gate: at most 3 logins in 15 minutes after a refusal --------------------------------------------

def test_gate_backs_off_and_allows_three_logins_per_window():
    now = [1000.0]
    gate = SessionGate(clock=lambda: now[0])
    assert gate.may_login() and gate.snapshot()["broker"] == LOGGING_IN
    gate.succeeded()
    assert gate.snapshot()["broker"] == LOGGED_IN
    assert gate.refused_login("Invalid Input : Wrong Password", credentials=True) is True  # first: notify
    assert gate.snapshot()["broker"] == LOGGED_OUT and not gate.may_login()
    now[0] += 59
    assert not gate.may_login()
    now[0] += 1
    assert gate.may_login()
    assert gate.refused_login("again", credentials=True) is False  # not a new notification
    now[0] += 239
    assert not gate.may_login()
    now[0] += 1
    assert gate.may_login()
    gate.refused_login("again", credentials=True)  # the third refusal at 1300 s: the window is full
    now[0] = 1000 + 899
    assert not gate.may_login()
    now[0] = 1000 + 900  # the first refusal has left the window
    assert gate.may_login()
    assert gate.succeeded() is True  # ends the refusal: worth telling
    assert gate.snapshot()["broker"] == LOGGED_IN and gate.snapshot()["reason"] is None
    # Refusals still in the window count after a success: a flapping password cannot make it 4 in 15 min.
    gate.refused_login("again", credentials=True)
    assert gate.wait_s() == pytest.approx(1060 + 900 - now[0])


def test_network_failures_do_not_count_as_refusals():
    gate = SessionGate(clock=lambda: 0.0)
    for _ in range(10):
        gate.failed("QuickAuth: connection failed")
    assert gate.may_login() and not gate.refused and gate.snapshot()["broker"] == LOGGING_IN


# ---- oms run with a wrong password ------------------------------------------------------------------------

def test_oms_run_with_a_wrong_password_exits_2_with_one_line(paper_factory, tmp_path):
    exchange = paper_factory(users={"TEST1": PASSWORD})
    config = tmp_path / "config.toml"
    config.write_text(f'''[service]
data_dir = "{tmp_path / 'data'}"
port = 0
[webhook]
secret_key = "a-webhook-secret-of-our-own"
[broker]
mode = "shoonya"
rest_url = "{exchange.rest_url}"
ws_url = "{exchange.ws_url}"
user_id = "TEST1"
password = "{WRONG}"
''', encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "runtime.cli", "run", "--config", str(config)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60,
                            env={"PATH": str(VENV_BIN) + ":/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    # The service's own log lines come first; the last line says why it stopped, once.
    refusal = [line for line in lines if "refused the login" in line]
    assert len(refusal) == 1 and refusal[0] == lines[-1] and refusal[0].startswith("oms: "), result.stderr
    assert "next try" not in result.stderr and "notify [broker]" not in result.stderr  # it does not retry
    assert "Wrong Password" in refusal[0] and "TEST1" in refusal[0]
    logs = "".join(p.read_text() for p in (tmp_path / "data").rglob("*.jsonl"))
    for text in (result.stdout, result.stderr, logs):
        assert WRONG not in text and PASSWORD not in text
    assert exchange.logins()["TEST1"] == {"attempts": 1, "refused": 1}
    assert paper_orders(exchange) == []


def test_start_refused_in_process_but_a_network_error_is_not_a_rejection(paper_factory, make_system):
    exchange = paper_factory(users={"TEST1": PASSWORD})
    with pytest.raises(StartRefused, match="Wrong Password"):
        make_system(exchange, broker={"password": WRONG})
    assert exchange.logins()["TEST1"]["attempts"] == 1

    with socket.socket() as probe:  # a port nobody listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    system = make_system(exchange, broker={"password": PASSWORD, "use_websocket": False,
                                           "rest_url": f"http://127.0.0.1:{dead}/NorenWClientTP/"})
    reply = requests.get(f"{system.url}/health", timeout=5)
    assert reply.status_code == 503
    assert reply.json()["broker"] == LOGGING_IN and reply.json()["websocket"] == "off"


# ---- a running service whose re-login is refused ---------------------------------------------------------

def health(system) -> tuple[int, dict]:
    reply = requests.get(f"{system.url}/health", timeout=5)
    return reply.status_code, reply.json()


def broker_notes(system) -> list[str]:
    return [n["text"] for n in system.notifications()["recent"] if n["kind"] == "broker"]


def submit(system, payload) -> str:
    status, body = system.inject_alert(payload)
    assert status == 202, (status, body)
    return body["orders"][0]["command_id"]


def test_refused_relogin_blocks_orders_notifies_once_and_retries_three_times_per_window(paper_factory,
                                                                                      make_system):
    exchange = paper_factory(users={"TEST1": PASSWORD})
    system = make_system(exchange, broker={"password": PASSWORD},
                         risk={"max_entries_per_second": 0, "max_entries_per_minute": 0})
    system.wait_until(lambda: health(system)[1]["status"] == "ok", 10, "health ok")
    code, body = health(system)
    assert code == 200 and body["broker"] == LOGGED_IN and body["websocket"] == "up" and body["risk"] == "ACTIVE"
    assert PASSWORD not in str(body) and "TEST1" not in str(body)
    before = exchange.logins()["TEST1"]["attempts"]

    # The session expires and the password has changed: the re-login is refused.
    exchange.set_users(TEST1="changed-elsewhere")
    paper_faults(exchange, expire_sessions=True)
    ids = [submit(system, alert(strategy=f"S{i}", tradingsymbol=NIFTY_CE if i % 2 else NIFTY_PE,
                                alert_id=f"refused-{i}")) for i in range(4)]
    ids.append(submit(system, alert(strategy="SPREAD", alert_id="refused-spread", legs=[
        {"tradingsymbol": NIFTY_CE, "direction": "BUY", "qty": 65, "order_type": "MARKET", "product_type": "NRML"},
        {"tradingsymbol": NIFTY_PE, "direction": "SELL", "qty": 65, "order_type": "LIMIT", "price": 100,
         "product_type": "NRML"}])))
    for cid in ids:
        order = system.wait_for_status(cid, "FAILED", timeout=15)
        assert order["tag"] in ("SEND_FAILED:NOT_LOGGED_IN", "SEND_FAILED:OTHER_LEG_BLOCKED"), order
    failed = system.orders(status="FAILED")
    assert not [o for o in failed if "NO_QUOTE" in (o["tag"] or "")]
    assert all(o["tag"] == "SEND_FAILED:NOT_LOGGED_IN" for o in failed if o["strategy_name"] != "SPREAD")
    assert paper_orders(exchange) == []

    system.wait_until(lambda: broker_notes(system), 10, "the refusal notification")
    code, body = health(system)
    assert code == 503 and body["status"] == "unavailable" and body["broker"] == LOGGED_OUT
    assert "Wrong Password" in body["reason"] and "TEST1" not in str(body)
    refused = exchange.logins()["TEST1"]["attempts"] - before
    assert refused == 1, exchange.logins()  # the orders did not log in: the next try is 60 s away

    # Time passes (the gate's clock): the scheduled retries come; never more than 3 logins in 15 minutes.
    gate = system.broker_session
    offset = [0.0]
    gate.clock = lambda: time.monotonic() + offset[0]
    for step in (61, 241, 100, 100, 100):
        offset[0] += step
        system.registry.ask("broker", ReloginDue(), timeout=10)  # what the retry timer tells the broker
        system.registry.ask("broker", Relogin(), timeout=10)  # and what the readers ask on Session Expired
        cid = submit(system, alert(strategy="LATE", alert_id=f"late-{step}-{offset[0]}", tradingsymbol=NIFTY_CE))
        assert system.wait_for_status(cid, "FAILED")["tag"] == "SEND_FAILED:NOT_LOGGED_IN"
    assert exchange.logins()["TEST1"]["attempts"] - before == 3
    assert len(broker_notes(system)) == 1, broker_notes(system)

    # The password is fixed; once the first refusal leaves the window, the next retry logs in and orders go.
    exchange.set_users(TEST1=PASSWORD)
    offset[0] += 400
    assert system.registry.ask("broker", ReloginDue(), timeout=10) is True
    system.wait_until(lambda: health(system)[0] == 200, 10, "health 200 after the login")
    assert health(system)[1]["broker"] == LOGGED_IN
    cid = submit(system, alert(strategy="AFTER", alert_id="after", tradingsymbol=NIFTY_CE))
    system.wait_for_status(cid, "EXECUTED", timeout=15)
    system.wait_until(lambda: len(broker_notes(system)) == 2, 10, "the recovery notification")
    assert "works again" in broker_notes(system)[1]


def test_health_is_degraded_while_the_websocket_is_down(make_system, paper):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    system = make_system(broker={"ws_url": f"ws://127.0.0.1:{dead}/NorenWSTP/"})
    code, body = health(system)
    assert code == 200 and body["status"] == "degraded" and body["websocket"] == "down"
    assert body["broker"] == LOGGED_IN and "WebSocket" in body["reason"]
    cid = submit(system, alert(tradingsymbol=NIFTY_CE))  # orders still go (polling carries on)
    system.wait_for_status(cid, "EXECUTED", timeout=15)


def test_health_stays_ok_when_halted(make_system, paper):
    system = make_system()
    system.wait_until(lambda: health(system)[1]["websocket"] == "up", 10, "socket up")
    assert health(system)[0] == 200 and health(system)[1]["status"] == "ok"
    # HALTED is a choice, not a fault.
    requests.post(f"{system.url}/risk/halt", headers=system.operator_headers, json={"secret_key": "test-secret"}, timeout=5).raise_for_status()
    code, body = health(system)
    assert code == 200 and body["status"] == "ok" and body["risk"] == "HALTED"
