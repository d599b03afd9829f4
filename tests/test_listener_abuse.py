"""The webhook listener under abuse, over real sockets: an idle-connection flood, hostile bodies (every one a
400/401 with an `alerts` row, never a 500), rate-limited notifications of refusals, and the listener answering
503 while start-up recovery is still running."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from runtime.config import config_from_dict
from runtime.system import System
from tests.conftest import SECRET, alert, paper_faults
from tests.symbols import NIFTY_CE

FLOOD = 1100

# Opens N idle TCP connections (no request, no credentials) and holds them until stdin closes.
FLOODER = r"""
import resource, socket, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
port, n = int(sys.argv[1]), int(sys.argv[2])
socks = []
for _ in range(n):
    s = socket.socket()
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    socks.append(s)
print("open", len(socks), flush=True)
sys.stdin.read()
for s in socks:
    s.close()
"""


def alert_rows(system) -> list[dict]:
    with sqlite3.connect(Path(system.config.service.data_dir) / "orders.db") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM alerts ORDER BY id")]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def max_fd() -> int:
    return max(int(fd) for fd in os.listdir("/proc/self/fd"))


def test_a_flood_of_idle_connections_does_not_silence_the_listener(make_system):
    system = make_system()
    before = open_fds()
    flooder = subprocess.Popen([sys.executable, "-c", FLOODER, str(system.port), str(FLOOD)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert flooder.stdout.readline().split() == ["open", str(FLOOD)]
        # The listener runs in this process: wait until it has accepted the flood (descriptors past 1024).
        # (Other sockets of this process may close meanwhile: count loosely, but past descriptor 1024.)
        system.wait_until(lambda: open_fds() - before >= FLOOD * 0.9 or max_fd() > 1100, 30,
                          f"the listener to accept the flood ({open_fds() - before} new, highest fd {max_fd()})")
        assert max_fd() > 1024
        reply = requests.post(system.url + "/webhook", json=alert(tradingsymbol=NIFTY_CE, alert_id="flood-1"),
                              timeout=10)
        assert reply.status_code == 202, reply.text
        command_id = reply.json()["orders"][0]["command_id"]
        system.wait_for_status(command_id, "EXECUTED", timeout=20)
        assert requests.get(system.url + "/health", timeout=10).status_code == 200
        assert not system.fatal.is_set()
    finally:
        flooder.stdin.close()
        flooder.wait(timeout=30)


def _deep(depth: int) -> bytes:
    return ("[" * depth + "]" * depth).encode()


def _with_deep_unknown_key(depth: int) -> bytes:
    payload = json.dumps(alert(tradingsymbol=NIFTY_CE))
    return (payload[:-1] + ', "extra": ' + "[" * depth + "1" + "]" * depth + "}").encode()


def _huge_number(digits: int) -> bytes:
    payload = json.dumps(alert(tradingsymbol=NIFTY_CE, qty=12345))
    return payload.replace("12345", "1" * digits).encode()


HOSTILE = {
    "nested-30000": (_deep(30000), {}),
    "object-nested-9000": (('{"a":' * 9000 + "1" + "}" * 9000).encode(), {}),  # under the 64 KB limit
    "number-5000-digits": (_huge_number(5000), {}),
    "float-5000-digits": (_huge_number(5000).replace(b"1111", b"1.11", 1), {}),
    "deep-unknown-key-600": (_with_deep_unknown_key(600), {}),
    "not-utf8": (b'{"secret_key": "\xff\xfe", "legs": []}', {}),
    "lone-surrogate": (json.dumps(alert(strategy="S\ud800")).encode(), {}),
    "non-ascii-signature": (json.dumps({**alert(tradingsymbol=NIFTY_CE), "secret_key": None}).encode(),
                            {"X-Signature": "é" * 64}),
    "nul-and-controls": (b'{"secret_key": "\x00", "legs": [\x01]}', {}),
    "array-of-objects": (b"[" + b"{}," * 1000 + b"{}]", {}),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_bodies_are_400_or_401_and_audited_never_500(make_system, paper, name):
    system = make_system()
    body, headers = HOSTILE[name]
    reply = requests.post(system.url + "/webhook", data=body, timeout=30,
                          headers={"Content-Type": "application/json", **headers})
    assert reply.status_code in (400, 401), (reply.status_code, reply.text[:300])
    assert reply.json()["error"]
    rows = system.wait_until(lambda: [r for r in alert_rows(system) if r["http_status"] == reply.status_code],
                             10, "the audit row")
    assert rows[0]["outcome"] in ("invalid", "unauthorized")
    assert system.orders() == []
    assert requests.get(system.url + "/health", timeout=5).status_code == 200


def test_refusals_are_notified_at_most_once_a_minute(make_system):
    system = make_system()
    for i in range(6):
        assert requests.post(system.url + "/webhook", json=alert(secret=f"guess-{i}"), timeout=5).status_code == 401
    system.wait_until(lambda: len(alert_rows(system)) == 6, 10, "six audit rows")
    refused = [n for n in system.notifications()["recent"] if n["kind"] == "refused"]
    assert len(refused) == 1, refused
    assert "401" in refused[0]["text"] and "guess" not in refused[0]["text"]


def test_listener_answers_503_until_recovery_has_finished(tmp_path, paper):
    paper_faults(paper, latency_ms=1500)  # every REST call of login and recovery is slow
    config = config_from_dict({
        "service": {"data_dir": str(tmp_path / "data"), "port": 0, "shutdown_drain_s": 2},
        "webhook": {"secret_key": SECRET},
        "broker": {"mode": "shoonya", "rest_url": paper.rest_url, "ws_url": paper.ws_url, "user_id": "TEST1",
                   "poll_interval_s": 0.3, "request_timeout_s": 5},
    }, environ={})
    system = System(config, listen_port=0, log_to_stderr=False)
    failure: list[BaseException] = []

    def start():
        try:
            system.start()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failure.append(exc)

    starter = threading.Thread(target=start, daemon=True)
    starter.start()
    try:
        deadline = time.monotonic() + 10
        while system.port is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert system.port is not None, "the listener is bound first"
        health = requests.get(system.url + "/health", timeout=5)
        hook = requests.post(system.url + "/webhook", json=alert(tradingsymbol=NIFTY_CE), timeout=5)
        orders = requests.get(system.url + "/orders", headers=system.operator_headers, timeout=5)
        assert not system.started, "the answers must come while recovery is still running"
        assert health.status_code == 503 and health.json()["status"] == "unavailable"
        assert hook.status_code == 503
        assert orders.status_code == 503
        assert requests.get(system.url + "/orders", timeout=5).status_code == 401  # credentials first, always
        starter.join(timeout=60)
        assert not failure and system.started
        paper_faults(paper, latency_ms=0)
        assert requests.get(system.url + "/health", timeout=5).status_code == 200
        reply = requests.post(system.url + "/webhook", json=alert(tradingsymbol=NIFTY_CE), timeout=5)
        assert reply.status_code == 202
        # the 503 during start-up was audited once the store was up
        system.wait_until(lambda: any(r["http_status"] == 503 for r in alert_rows(system)), 10, "the 503 row")
    finally:
        starter.join(timeout=60)
        system.stop()
