"""The dashboard (/ui/) over plain HTTP against the real service and paper exchange: login, session, CSRF,
headers, and the actions going through the same pipeline as the JSON API (source "dashboard")."""

from __future__ import annotations

import re
import stat
import time

import pytest
import requests

from actors.dashboard.app import SESSION_TTL_S, session_fresh
from actors.dashboard.words import ist, plain_tag
from storage.models import Alert, Order
from tests.conftest import alert, set_ltp
from tests.symbols import NIFTY_CE

PASSWORD = "correct horse battery staple"
TERMINAL = ("EXECUTED", "FAILED")


def csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def login(system, password: str = PASSWORD) -> tuple[requests.Session, requests.Response]:
    session = requests.Session()
    page = session.get(f"{system.url}/ui/login", timeout=5)
    reply = session.post(f"{system.url}/ui/login", data={"csrf": csrf(page.text), "password": password}, timeout=10)
    return session, reply


@pytest.fixture
def dash(make_system):
    return make_system(operator={"password": PASSWORD})


def test_login_session_cookie_and_headers(dash):
    first = requests.get(f"{dash.url}/", headers=dash.operator_headers, timeout=5, allow_redirects=False)
    assert first.status_code == 302 and first.headers["Location"].endswith("/ui/")
    anonymous = requests.get(f"{dash.url}/ui/positions", timeout=5, allow_redirects=False)
    assert anonymous.status_code == 302 and "/ui/login" in anonymous.headers["Location"]
    assert requests.get(f"{dash.url}/ui/api/orders?since=", timeout=5).status_code == 401

    session, reply = login(dash)
    assert reply.status_code == 200 and reply.url.endswith("/ui/"), reply.text
    cookie = reply.history[0].headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie  # plain HTTP here
    csp = reply.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "'unsafe-inline'" not in csp
    assert "<script>" not in reply.text and 'src="/ui/static/app.js"' in reply.text
    assert PASSWORD not in cookie

    secret = dash.data_dir / "dashboard_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and len(secret.read_text().strip()) >= 32
    assert PASSWORD not in (dash.data_dir / "logs" / "service.jsonl").read_text()


def test_wrong_password_is_refused_and_attempts_are_throttled(dash):
    session, reply = login(dash, "wrong")
    assert reply.status_code == 401 and "Wrong password" in reply.text
    assert session.get(f"{dash.url}/ui/positions", timeout=5, allow_redirects=False).status_code == 302
    for _ in range(9):
        login(dash, "wrong")
    _, locked = login(dash)  # the right password, but the address is locked out now
    assert locked.status_code == 429 and "Too many failed logins" in locked.text
    from storage.models import Alert  # every refusal is audited (issue 13)

    def audited(outcome):
        return Alert.select().where((Alert.source == "operator") & (Alert.outcome == outcome)
                                    & Alert.error.startswith("dashboard login")).count()

    dash.wait_until(lambda: audited("unauthorized") == 10 and audited("locked_out") == 1, 5, "the refusals audited")


def test_without_a_configured_password_every_login_is_refused(make_system):
    system = make_system()
    page = requests.get(f"{system.url}/ui/login", timeout=5)
    assert "[operator] password" in page.text
    _, reply = login(system, "")
    assert reply.status_code in (400, 403)
    _, reply = login(system, "anything")
    assert reply.status_code == 403 and "OMS_OPERATOR_PASSWORD" in reply.text


def test_a_post_without_the_csrf_token_changes_nothing(dash):
    session, _ = login(dash)
    refused = session.post(f"{dash.url}/ui/risk/halt", data={"confirm": "yes"}, timeout=5)
    assert refused.status_code == 400 and "nothing was done" in refused.text
    wrong = session.post(f"{dash.url}/ui/risk/halt", data={"confirm": "yes", "csrf": "forged"}, timeout=5)
    assert wrong.status_code == 400
    assert requests.get(f"{dash.url}/risk", headers=dash.operator_headers, timeout=5).json()["state"] == "ACTIVE"


def test_an_expired_session_goes_back_to_login(dash):
    session, _ = login(dash)
    app = dash.app.dashboard
    serializer = app.session_interface.get_signing_serializer(app)
    # A correctly signed session whose login is older than the lifetime: refused by the server itself.
    stale = serializer.dumps({"user": "operator", "t": time.time() - SESSION_TTL_S - 60, "csrf": "x",
                              "_permanent": True})
    expired = requests.Session()
    expired.cookies.set("oms_session", stale, domain="127.0.0.1", path="/")
    reply = expired.get(f"{dash.url}/ui/positions", timeout=5)
    assert reply.url.split("?")[0].endswith("/ui/login") and "session expired" in reply.text
    assert expired.get(f"{dash.url}/ui/api/orders?since=", timeout=5).status_code == 401
    assert session.get(f"{dash.url}/ui/positions", timeout=5).url.endswith("/ui/positions")


def test_manual_order_double_submit_trades_once_and_exit_button(dash, paper):
    set_ltp(paper, "NFO", NIFTY_CE, 100.0)
    session, _ = login(dash)
    form = session.get(f"{dash.url}/ui/new", timeout=5).text
    idem = re.search(r'name="idem" value="([^"]+)"', form).group(1)
    data = {"csrf": csrf(form), "idem": idem, "strategy_name": "MAN", "execution_type": "ENTRY", "exchange": "NFO",
            "leg0_symbol": NIFTY_CE, "leg0_direction": "BUY", "leg0_qty": "65", "leg0_order_type": "MARKET",
            "leg0_product": "NRML"}
    first = session.post(f"{dash.url}/ui/new", data=data, timeout=10)
    assert first.status_code == 200 and "Registered 1 leg" in first.text, first.text
    again = session.post(f"{dash.url}/ui/new", data=data, timeout=10)
    assert again.status_code == 200 and "already submitted" in again.text
    orders = list(Order.select().where(Order.strategy_name == "MAN"))
    assert len(orders) == 1 and orders[0].source == "dashboard" and orders[0].alert_id == f"dashboard-{idem}"
    assert dash.wait_for_status(orders[0].command_id, TERMINAL, timeout=15)["status"] == "EXECUTED"

    bad = session.post(f"{dash.url}/ui/new", data={**data, "idem": "a" * 32, "leg0_qty": "abc"}, timeout=10)
    assert bad.status_code == 400 and "qty" in bad.text
    assert Order.select().where(Order.strategy_name == "MAN").count() == 1

    page = session.get(f"{dash.url}/ui/positions", timeout=5).text
    exit_form = {"csrf": csrf(page), "scope": "position", "strategy": "MAN", "symbol": NIFTY_CE, "exchange": "NFO"}
    asked = session.post(f"{dash.url}/ui/positions/exit", data=exit_form, timeout=10)
    assert asked.status_code == 200 and "Exit MAN" in asked.text  # a confirmation step, nothing sent yet
    assert Order.select().where(Order.strategy_name == "MAN").count() == 1
    done = session.post(f"{dash.url}/ui/positions/exit", data={**exit_form, "confirm": "yes"}, timeout=10)
    assert done.status_code == 200 and "Exit registered: 1 order" in done.text
    exit_row = Order.get((Order.strategy_name == "MAN") & (Order.execution_type == "EXIT"))
    assert exit_row.source == "dashboard"
    assert dash.wait_for_status(exit_row.command_id, TERMINAL, timeout=15)["status"] == "EXECUTED"
    assert Alert.get(Alert.alert_key == exit_row.alert_key).source == "dashboard"


def test_live_endpoint_returns_rows_changed_since(dash):
    session, _ = login(dash)
    status, body = dash.inject_alert(alert(strategy="LIVE", alert_id="live-1"))
    cid = body["orders"][0]["command_id"]
    dash.wait_for_status(cid, TERMINAL, timeout=15)
    data = session.get(f"{dash.url}/ui/api/orders", params={"since": ""}, timeout=5).json()
    row = next(r for r in data["rows"] if r["command_id"] == cid)
    assert row["status"] == "EXECUTED" and data["counts"]["EXECUTED"] == 1
    later = session.get(f"{dash.url}/ui/api/orders", params={"since": data["since"]}, timeout=5).json()
    assert later["rows"] == [] and later["since"] == data["since"]
    filtered = session.get(f"{dash.url}/ui/api/orders", params={"since": "", "strategy": "OTHER"}, timeout=5).json()
    assert filtered["rows"] == []


def test_plain_words_and_times():
    assert plain_tag("RISK_BLOCKED:KILL_SWITCH") == "blocked by risk: trading halted by the operator"
    assert plain_tag("BROKER_REJECTED:RMS:Margin Exceeds") == "rejected by the broker: RMS:Margin Exceeds"
    assert plain_tag("GUARD_BLOCKED:OTHER_LEG_BLOCKED").endswith("another leg of the same alert was blocked")
    assert plain_tag("LOST_IN_FLIGHT").startswith("lost in flight")
    assert plain_tag("SOMETHING_NEW") == "something new"
    assert ist("2026-11-30T18:30:00.000000+00:00") == "2026-12-01 00:00:00"
    assert session_fresh({"user": "operator", "t": 1000.0}, 1000.0 + SESSION_TTL_S + 1) == "expired"
    assert session_fresh({"user": "operator", "t": 1000.0}, 1001.0) == "ok"
    assert session_fresh({}, 1001.0) == "none"


def test_operator_session_ok_tells_a_live_session(dash):
    from werkzeug.test import EnvironBuilder

    from actors.dashboard.app import operator_session_ok

    session, _ = login(dash)
    app = dash.app.dashboard
    cookie = session.cookies.get("oms_session")
    with_cookie = EnvironBuilder(path="/positions", headers={"Cookie": f"oms_session={cookie}"}).get_environ()
    assert operator_session_ok(app, with_cookie)
    assert not operator_session_ok(app, EnvironBuilder(path="/positions").get_environ())
    forged = EnvironBuilder(path="/positions", headers={"Cookie": f"oms_session={cookie[:-2]}xx"}).get_environ()
    assert not operator_session_ok(app, forged)
