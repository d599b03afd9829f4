"""The `oms` command as an operator runs it: a subprocess, real config files, a data_dir left by a System run."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.conftest import alert, paper_faults, paper_orders
from tests.symbols import NIFTY_PE

VENV_BIN = Path(sys.executable).parent
OMS_SCRIPT = VENV_BIN / "oms"
TERMINAL = ("EXECUTED", "FAILED")


def oms(*args: str, cwd: Path, script: bool = False) -> subprocess.CompletedProcess:
    command = [str(OMS_SCRIPT)] if script and OMS_SCRIPT.exists() else [sys.executable, "-m", "runtime.cli"]
    return subprocess.run(command + list(args), cwd=cwd, capture_output=True, text=True, timeout=30,
                          env={"PATH": str(VENV_BIN) + ":/usr/bin:/bin", "HOME": str(cwd)})


def write_config(path: Path, data_dir: Path, extra: str = "") -> Path:
    path.write_text(f'[service]\ndata_dir = "{data_dir}"\n{extra}', encoding="utf-8")
    return path


@pytest.mark.parametrize("script", [False, True], ids=["python-m", "console-script"])
def test_run_with_a_missing_config_exits_2_naming_the_file(tmp_path, script):
    result = oms("run", "--config", "missing.toml", cwd=tmp_path, script=script)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing.toml" in lines[0], result.stderr
    assert result.stdout == ""


def test_unknown_config_key_exits_2_naming_the_key(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[service]\nport = 8080\nbogus_setting = 1\n', encoding="utf-8")
    result = oms("run", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "bogus_setting" in lines[0] and "bad.toml" in lines[0], result.stderr

    config.write_text('[nonsense]\nkey = 1\n', encoding="utf-8")
    result = oms("verify", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2 and "nonsense" in result.stderr


def test_wrong_type_and_unknown_subcommand_exit_2(tmp_path):
    config = tmp_path / "typed.toml"
    config.write_text('[service]\nport = "eighty"\n', encoding="utf-8")
    result = oms("run", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2 and "port" in result.stderr
    assert oms("frobnicate", cwd=tmp_path).returncode == 2


def test_orders_without_a_database_exits_2(tmp_path):
    config = write_config(tmp_path / "c.toml", tmp_path / "empty")
    result = oms("orders", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2 and "orders.db" in result.stderr


@pytest.fixture
def used_data_dir(make_system, paper, tmp_path):
    """A data_dir after a System run: one EXECUTED order and one left open (SENT_TO_BROKER) at stop."""
    data_dir = tmp_path / "ran"
    system = make_system(data_dir=data_dir)
    status, body = system.inject_alert(alert(strategy="DONE", alert_id="cli-1"))
    assert status == 202
    executed = body["orders"][0]["command_id"]
    status, body = system.inject_alert(alert(strategy="OPEN", alert_id="cli-2", tradingsymbol=NIFTY_PE,
                                             order_type="LIMIT", price=1.0))
    assert status == 202
    resting = body["orders"][0]["command_id"]
    system.wait_for_status(executed, "EXECUTED")
    system.wait_until(lambda: (o := system.order(resting)) and o["broker_status"] == "OPEN", 10,
                      "the broker to report the resting order OPEN")
    assert system.order(resting)["status"] == "SENT_TO_BROKER"
    system.stop()
    config = write_config(tmp_path / "ran.toml", data_dir)
    return config, executed, resting


def test_orders_json(used_data_dir, tmp_path):
    config, executed, resting = used_data_dir
    result = oms("orders", "--json", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert {r["command_id"]: r["status"] for r in rows} == {executed: "EXECUTED", resting: "SENT_TO_BROKER"}
    result = oms("orders", "--json", "--status", "EXECUTED", "--config", str(config), cwd=tmp_path)
    assert [r["command_id"] for r in json.loads(result.stdout)] == [executed]
    table = oms("orders", "--config", str(config), cwd=tmp_path, script=True)
    assert table.returncode == 0 and executed in table.stdout and resting in table.stdout
    assert "2 order(s)" in table.stdout


def test_verify_exit_codes(used_data_dir, tmp_path):
    config, executed, resting = used_data_dir
    calm = oms("verify", "--config", str(config), cwd=tmp_path)
    assert calm.returncode == 0, calm.stdout + calm.stderr
    assert "EXECUTED=1" in calm.stdout and "SENT_TO_BROKER=1" in calm.stdout
    assert resting not in calm.stdout

    # However old, a resting order the broker reports OPEN is confirmed: not stuck.
    confirmed = oms("verify", "--stuck-after", "0", "--config", str(config), cwd=tmp_path)
    assert confirmed.returncode == 0, confirmed.stdout + confirmed.stderr
    assert resting not in confirmed.stdout


def test_tail_prints_alert_and_order_events(used_data_dir, tmp_path):
    config, executed, resting = used_data_dir
    result = oms("tail", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any("ALERT cli-1" in line for line in lines), result.stdout
    mine = [line for line in lines if f"ORDER {executed}" in line]
    assert mine and "-> CREATED" in mine[0] and "SENT_TO_BROKER -> EXECUTED" in mine[-1], mine
    assert any("filled=65" in line for line in mine), mine

    only = oms("tail", "--command-id", resting, "--config", str(config), cwd=tmp_path)
    assert only.returncode == 0
    assert only.stdout.strip() and all(resting in line for line in only.stdout.splitlines()), only.stdout


def test_verify_names_an_order_whose_place_reply_never_came(make_system, paper, tmp_path):
    """The exchange holds the PlaceOrder reply: the outcome is unknown, the order must stay non-terminal,
    never be resent, and `oms verify` must name it while the broker has not confirmed it.
    No WebSocket and no polling of the service's own while the reply is held (request_timeout_s is long):
    nothing can tell the service about the order, so it has no broker_status."""
    paper_faults(paper, hang_place_orders=1)
    data_dir = tmp_path / "hung"
    system = make_system(data_dir=data_dir, broker={"use_websocket": False, "poll_interval_s": 60.0,
                                                    "request_timeout_s": 10.0})
    status, body = system.inject_alert(alert(strategy="HUNG", alert_id="cli-hung", order_type="LIMIT", price=1.0))
    assert status == 202
    cid = body["orders"][0]["command_id"]
    system.wait_until(lambda: system.order(cid)["status"] == "SENT_TO_BROKER", 5, "the order to be sent")
    system.wait_until(lambda: [o for o in paper_orders(paper) if o["remarks"] == cid], 5, "the exchange to have it")
    system.wait_until(lambda: datetime.now(timezone.utc) - datetime.fromisoformat(system.order(cid)["updated_at"])
                      > timedelta(seconds=0.2), 5, "the order to be older than stuck_after_s")
    assert system.order(cid)["broker_status"] is None
    config = write_config(tmp_path / "hung.toml", data_dir, "stuck_after_s = 0.2\n")
    result = oms("verify", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert cid in result.stdout and "SENT_TO_BROKER" in result.stdout and "broker_status=-" in result.stdout
    system.stop()
    assert [o["remarks"] for o in paper_orders(paper)] == [cid], "the order was sent more than once"
