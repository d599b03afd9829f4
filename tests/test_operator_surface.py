"""Issue 13: two surfaces. Only POST /webhook[/<path_token>] and GET /health answer without operator credentials;
signed webhooks carry a timestamp and the path and cannot be replayed; failed authentications lock an address out.
Real listener, real sockets, real paper exchange."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
import time

import pytest
import requests

from conftest import SECRET, alert
from storage.models import Alert

OPERATOR_GETS = ("/orders", "/orders/anything", "/positions", "/diagnostics", "/risk")
OPERATOR_POSTS = ("/risk/halt", "/risk/reduce", "/risk/resume", "/risk/flatten", "/risk/flatten/stop",
                  "/positions/exit", "/orders/cancel")


def signed(body: bytes, path: str = "/webhook", secret: str = SECRET, stamp: float | None = None) -> dict:
    timestamp = str(int(time.time() if stamp is None else stamp))
    digest = hmac.new(secret.encode(), timestamp.encode() + b"\n" + path.encode() + b"\n" + body,
                      hashlib.sha256).hexdigest()
    return {"X-Signature": digest, "X-Timestamp": timestamp, "Content-Type": "application/json"}


def audited(outcome: str, status: int) -> list[Alert]:
    return list(Alert.select().where((Alert.outcome == outcome) & (Alert.http_status == status)))


def test_nothing_but_the_webhook_and_health_answers_without_credentials(make_system):
    system = make_system()
    for path in OPERATOR_GETS:
        reply = requests.get(system.url + path, timeout=5)
        assert reply.status_code == 401, path
        assert "orders" not in reply.json() and "state" not in reply.json()
    for path in OPERATOR_POSTS:
        # the webhook secret (in the body) authorizes nothing here any more
        assert requests.post(system.url + path, json={"secret_key": SECRET}, timeout=5).status_code == 401, path
        assert requests.post(system.url + path, json={}, headers={"Authorization": "Bearer wrong"},
                             timeout=5).status_code == 401, path
    assert requests.get(system.url + "/risk", headers=system.operator_headers, timeout=5).json()["state"] == "ACTIVE"
    system.wait_until(lambda: len(audited("unauthorized", 401)) >= len(OPERATOR_GETS) + 2 * len(OPERATOR_POSTS),
                      5, "every refusal audited")
    assert requests.get(system.url + "/health", timeout=5).status_code == 200
    reply = requests.post(f"{system.url}/risk/halt", headers=system.operator_headers, json={}, timeout=5)
    assert reply.status_code == 200 and reply.json()["state"] == "HALTED"


def test_the_generated_operator_token_is_in_a_file_only_its_owner_reads(make_system, tmp_path):
    system = make_system(data_dir=tmp_path / "data")
    path = tmp_path / "data" / "operator_token"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_text().strip() == system.operator_token and len(system.operator_token) >= 40


def test_a_signed_alert_needs_a_fresh_timestamp_and_cannot_be_replayed_even_after_a_restart(make_system, tmp_path):
    data = tmp_path / "signed"
    system = make_system(data_dir=data)
    payload = alert(strategy="SIG")
    del payload["secret_key"]
    body = json.dumps(payload).encode()
    headers = signed(body)
    first = requests.post(system.url + "/webhook", data=body, headers=headers, timeout=5)
    assert first.status_code == 202, first.text
    replay = requests.post(system.url + "/webhook", data=body, headers=headers, timeout=5)
    assert replay.status_code == 401 and "replay" in replay.json()["error"]
    # body-only signatures (the old scheme) are refused
    old = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert requests.post(system.url + "/webhook", data=body, headers={"X-Signature": old},
                         timeout=5).status_code == 401
    # a signature made for another path is not valid here; a stale timestamp is refused
    assert requests.post(system.url + "/webhook", data=body, headers=signed(body, path="/risk/halt"),
                         timeout=5).status_code == 401
    assert requests.post(system.url + "/webhook", data=body, headers=signed(body, stamp=time.time() - 600),
                         timeout=5).status_code == 401
    # a captured signed alert replayed to an operator path does nothing
    assert requests.post(system.url + "/risk/halt", data=body, headers=headers, timeout=5).status_code == 401
    system.stop()
    again = make_system(data_dir=data)
    assert requests.post(again.url + "/webhook", data=body, headers=headers, timeout=5).status_code == 401
    assert len([o for o in again.orders() if o["strategy_name"] == "SIG"]) == 1


def test_the_path_token_authenticates_and_a_wrong_one_is_an_unknown_path(make_system):
    token = "p" * 48
    system = make_system(webhook={"secret_key": SECRET, "path_token": token})
    payload = alert(strategy="PATH")
    del payload["secret_key"]
    reply = requests.post(f"{system.url}/webhook/{token}", json=payload, timeout=5)
    assert reply.status_code == 202, reply.text
    wrong = requests.post(f"{system.url}/webhook/{'q' * 48}", json=payload, timeout=5)
    assert wrong.status_code == 404 and "q" * 48 not in wrong.text
    unknown = requests.post(f"{system.url}/nothing-here", json=payload, timeout=5)
    assert unknown.status_code in (401, 404)
    assert requests.post(f"{system.url}/webhook", json=payload, timeout=5).status_code == 401  # no secret
    rows = list(Alert.select())
    assert all(token not in (r.body or "") + (r.error or "") for r in rows)
    logs = "".join(p.read_text() for p in (system.data_dir / "logs").glob("*.jsonl"))
    assert token not in logs and system.operator_token not in logs


def test_ten_failures_lock_an_address_out_but_never_loopback(make_system):
    system = make_system(service={"trusted_proxies": ["127.0.0.1"]})
    stranger = {"X-Forwarded-For": "198.51.100.9"}
    for _ in range(10):
        assert requests.get(system.url + "/orders", headers=stranger, timeout=5).status_code == 401
    locked = requests.get(system.url + "/orders", headers={**stranger, **system.operator_headers}, timeout=5)
    assert locked.status_code == 429  # even with the right token: the address is locked out
    assert requests.post(system.url + "/webhook", json=alert(), headers=stranger, timeout=5).status_code == 429
    # the operator on the machine itself (the oms commands) is never locked out
    for _ in range(12):
        assert requests.get(system.url + "/orders", timeout=5).status_code == 401
    assert requests.get(system.url + "/orders", headers=system.operator_headers, timeout=5).status_code == 200
    system.wait_until(lambda: audited("locked_out", 429), 5, "the lockout audited")
    system.wait_until(lambda: [n for n in system.notifications()["recent"] if "locked out" in n["text"]], 5,
                      "one lockout notification")


def test_behind_a_trusted_proxy_the_forwarded_client_is_recorded_and_tradingview_is_never_locked(make_system):
    system = make_system(service={"trusted_proxies": ["127.0.0.1"]}, webhook={"secret_key": SECRET,
                                                                            "allow_ips": "tradingview"})
    tv = {"X-Forwarded-For": "52.89.214.238"}
    for i in range(12):  # a stranger's bad alerts from TradingView's address
        assert requests.post(system.url + "/webhook", json=alert(secret=f"bad{i}"), headers=tv,
                             timeout=5).status_code == 401
    good = requests.post(system.url + "/webhook", json=alert(strategy="TV"), headers=tv, timeout=5)
    assert good.status_code == 202, good.text  # the trader's own alert still goes
    other = requests.post(system.url + "/webhook", json=alert(strategy="X"),
                          headers={"X-Forwarded-For": "198.51.100.7"}, timeout=5)
    assert other.status_code == 403  # not in allow_ips
    system.wait_until(lambda: Alert.select().where(Alert.remote_addr == "198.51.100.7").exists(), 5,
                      "the forwarded client audited")


def test_the_operator_surface_on_its_own_listener(make_system):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    system = make_system(operator={"port": port})
    assert requests.get(system.url + "/orders", headers=system.operator_headers, timeout=5).status_code == 404
    assert requests.get(f"http://127.0.0.1:{port}/orders", headers=system.operator_headers,
                        timeout=5).status_code == 200
    assert requests.get(f"http://127.0.0.1:{port}/orders", timeout=5).status_code == 401
    assert requests.post(f"http://127.0.0.1:{port}/webhook", json=alert(), timeout=5).status_code == 404
    assert requests.post(system.url + "/webhook", json=alert(), timeout=5).status_code == 202
