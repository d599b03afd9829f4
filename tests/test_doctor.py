"""`oms doctor`: real `oms doctor` processes against real paper exchanges (and a running `oms run`).

Every run also checks that no secret value of the config appears in what doctor printed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pyotp
import pytest

from runtime import doctor
from runtime.config import config_from_dict

VENV_BIN = Path(sys.executable).parent
SEED = pyotp.random_base32()
PASSWORD = "right-horse-battery"
WEBHOOK_SECRET = "doctor-webhook-secret-0123456789"
API_SECRET = "api-secret-abcdef"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(cwd: Path) -> dict:
    return {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": str(cwd)}


def write_config(tmp_path: Path, exchange=None, *, broker: dict | None = None, service: dict | None = None,
                 extra: str = "") -> Path:
    service = {"port": free_port(), "data_dir": str(tmp_path / "data"), "shutdown_drain_s": 1, **(service or {})}
    lines = ["[service]"] + [f"{k} = {_toml(v)}" for k, v in service.items()]
    lines += ["[webhook]", f"secret_key = {_toml(WEBHOOK_SECRET)}"]
    b = {}
    if exchange is not None:
        b = {"mode": "shoonya", "rest_url": exchange.rest_url, "ws_url": exchange.ws_url, "user_id": "TEST1",
             "password": PASSWORD, "totp_secret": SEED, "vendor_code": "TEST1_U", "api_secret": API_SECRET}
    b.update(broker or {})
    lines += ["[broker]"] + [f"{k} = {_toml(v)}" for k, v in b.items()]
    lines += ["[risk]", "enforce_trading_hours = false", extra]
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _toml(value) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value).lower() if isinstance(value, bool) else str(value)


def run_doctor(config: Path, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "runtime.cli", "doctor", "--config", str(config)], cwd=cwd,
                            env=_env(cwd), capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    for secret in (SEED, PASSWORD, WEBHOOK_SECRET, API_SECRET, "not-base32!", "wrong-password-value"):
        assert secret not in output, f"a secret value appears in doctor's output:\n{output}"
    return result


def lines(result: subprocess.CompletedProcess, name: str) -> list[str]:
    return [line for line in result.stdout.splitlines() if line[2:].startswith(f"{name}:")]


def count_logins(exchange) -> dict:
    """Count QuickAuth calls at the exchange (instrumenting the exchange, not the doctor under test)."""
    counter = {"n": 0}

    def install(server):
        original = server._routes["quickauth"]

        def counting(*args):
            counter["n"] += 1
            return original(*args)

        server._routes["quickauth"] = counting

    exchange._call(install)
    return counter


# ---- whole runs ----------------------------------------------------------------------------------------

def test_healthy_paper_set_up_exits_0(tmp_path):
    config = write_config(tmp_path, extra=f"[paper]\nport = {free_port()}\n")
    result = run_doctor(config, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("config", "clock", "broker login", "websocket", "service port", "paper port", "data dir",
                 "database", "disk"):
        found = lines(result, name)
        assert found and found[0].startswith("✓"), (name, result.stdout)
    assert "✗" not in result.stdout


def test_healthy_live_rehearsal_logs_in_once_and_exits_0(tmp_path, paper_factory):
    exchange = paper_factory(users={"TEST1": PASSWORD})
    logins = count_logins(exchange)
    result = run_doctor(write_config(tmp_path, exchange), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert lines(result, "broker login")[0].startswith("✓ broker login: TEST1 logged in")
    assert lines(result, "websocket")[0].startswith("✓")
    assert lines(result, "TOTP")[0].startswith("✓")
    assert logins["n"] == 1


def test_wrong_totp_seed_is_caught_and_no_login_is_tried(tmp_path, paper_factory):
    exchange = paper_factory(users={"TEST1": PASSWORD})
    logins = count_logins(exchange)
    result = run_doctor(write_config(tmp_path, exchange, broker={"totp_secret": "not-base32!"}), tmp_path)
    assert result.returncode == 1, result.stdout
    assert lines(result, "TOTP")[0].startswith("✗ TOTP: totp_secret is not a usable base32 TOTP seed")
    assert lines(result, "broker login")[0].startswith("✗ broker login: not tried")
    assert logins["n"] == 0, "a login sure to fail must not be tried (failed logins can lock the account)"


def test_wrong_password_is_caught(tmp_path, paper_factory):
    exchange = paper_factory(users={"TEST1": PASSWORD})
    result = run_doctor(write_config(tmp_path, exchange, broker={"password": "wrong-password-value"}), tmp_path)
    assert result.returncode == 1, result.stdout
    login = lines(result, "broker login")
    assert login and login[0].startswith("✗") and "Wrong Password" in login[0], result.stdout
    assert lines(result, "TOTP")[0].startswith("✓")


def test_missing_live_secrets_are_named_not_shown(tmp_path, paper_factory):
    exchange = paper_factory()
    config = write_config(tmp_path, exchange, broker={"vendor_code": "", "api_secret": ""})
    config.write_text(config.read_text().replace(WEBHOOK_SECRET, "change-me"), encoding="utf-8")
    result = run_doctor(config, tmp_path)
    assert result.returncode == 1
    assert lines(result, "webhook secret")[0].startswith("✗")
    creds = lines(result, "broker credentials")[0]
    assert creds.startswith("✗") and "broker.vendor_code" in creds and "OMS_BROKER_API_SECRET" in creds


def test_busy_port_is_caught(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = write_config(tmp_path, service={"port": port}, extra="[paper]\nport = 0\n")
        result = run_doctor(config, tmp_path)
    assert result.returncode == 1, result.stdout
    assert lines(result, "service port")[0] == f"✗ service port: 127.0.0.1:{port} in use by another process"


def test_bad_config_is_one_failed_line(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("[service]\nport = \"eighty\"\n", encoding="utf-8")
    result = run_doctor(config, tmp_path)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [line for line in result.stdout.splitlines() if line.startswith("✗ config:")]
    assert "service.port" in result.stdout


def test_while_the_service_runs_doctor_asks_it_and_does_not_log_in(tmp_path, paper_factory):
    exchange = paper_factory(users={"TEST1": PASSWORD})
    config = write_config(tmp_path, exchange)
    log = tmp_path / "oms.log"
    service = subprocess.Popen([sys.executable, "-m", "runtime.cli", "run", "--config", str(config)], cwd=tmp_path,
                               env=_env(tmp_path), stdout=log.open("ab"), stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while "service ready" not in log.read_text():
            assert service.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        logins = count_logins(exchange)  # from now on: the service is logged in
        result = run_doctor(config, tmp_path)
        assert service.poll() is None
    finally:
        if service.poll() is None:
            os.killpg(service.pid, signal.SIGTERM)
        service.wait(timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert lines(result, "service")[0].startswith(f"✓ service: the running service (PID {service.pid}) answers "
                                                  f"GET /health"), result.stdout
    assert lines(result, "broker login")[0].startswith("✓ broker login: not tried")
    assert lines(result, "service port")[0].startswith("✓ service port:") and "running service" in result.stdout
    assert "✗" not in result.stdout
    assert logins["n"] == 0, "doctor logged in beside the running service"


# ---- the pieces ---------------------------------------------------------------------------------------

def test_clock_check_compares_with_the_brokers_request_time():
    now = time.time()
    stamp = datetime.fromtimestamp(now, doctor.IST).strftime("%H:%M:%S %d-%m-%Y")
    assert doctor.clock_check(stamp, now - 0.1, now + 0.1).status == doctor.OK
    assert doctor.clock_check(stamp, now + 60, now + 60.2).status == doctor.FAIL
    behind = doctor.clock_check(stamp, now - 45, now - 45)
    assert behind.status == doctor.FAIL and "behind" in behind.detail
    assert doctor.clock_check("garbage", now, now).status == doctor.WARN


def test_secrets_check_by_mode():
    paper = config_from_dict({}, environ={})
    assert [c.status for c in doctor.check_secrets(paper)] == [doctor.WARN, doctor.OK]
    live = config_from_dict({"webhook": {"secret_key": WEBHOOK_SECRET},
                             "broker": {"mode": "shoonya", "auth": "oauth", "oauth_client_id": "APP"}}, environ={})
    checks = doctor.check_secrets(live)
    assert checks[0].status == doctor.OK
    assert checks[1].status == doctor.FAIL and "broker.auth_code (OMS_BROKER_AUTH_CODE)" in checks[1].detail


def test_database_check_finds_corruption(tmp_path):
    import sqlite3

    path = tmp_path / "orders.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (x TEXT)")
    db.executemany("INSERT INTO t VALUES (?)", [("x" * 500,) for _ in range(200)])
    db.commit()
    db.close()
    assert doctor.database_check(path).status == doctor.OK
    data = bytearray(path.read_bytes())
    data[2 * 4096:2 * 4096 + 8] = b"\x0d\xff\xff\xff\xff\xff\xff\xff"  # page 3: a leaf page's header scribbled
    path.write_bytes(bytes(data))
    assert doctor.database_check(path).status == doctor.FAIL


def test_disk_and_data_dir_checks(tmp_path):
    assert doctor.disk_check(tmp_path, min_free=10 ** 18).status == doctor.WARN
    assert doctor.disk_check(tmp_path / "not" / "yet").status == doctor.OK
    assert doctor.data_dir_check(tmp_path).status == doctor.OK
    file = tmp_path / "file"
    file.write_text("x")
    assert doctor.data_dir_check(file).status == doctor.FAIL
