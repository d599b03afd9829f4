"""Operator commands against a running service: `oms backup`, `oms cancel`, `oms exit --wait`, `oms tail`.

The service runs in-process (make_system, against the real paper exchange); every `oms` is a subprocess
with a config file pointing at it, as an operator would run it.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from messages.control import GetNotifierStats
from tests.conftest import SECRET, alert
from tests.symbols import NIFTY_CE, NIFTY_PE

VENV_BIN = Path(sys.executable).parent
TERMINAL = ("EXECUTED", "FAILED")


def oms(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={"PATH": str(VENV_BIN) + ":/usr/bin:/bin", "HOME": str(cwd)})


def cli_config(tmp_path: Path, system) -> Path:
    path = tmp_path / "cli.toml"
    path.write_text(f'[service]\ndata_dir = "{system.data_dir}"\nport = {system.port}\n'
                    f'[webhook]\nsecret_key = "{SECRET}"\n', encoding="utf-8")
    return path


def enter(system, strategy: str, symbol: str = NIFTY_CE, **fields) -> dict:
    status, body = system.inject_alert(alert(strategy=strategy, tradingsymbol=symbol, **fields))
    assert status == 202, body
    return body["orders"][0]


def resting(system, strategy: str, symbol: str = NIFTY_PE) -> str:
    """A BUY LIMIT far below the market: it rests at the exchange (SENT_TO_BROKER with a broker id)."""
    cid = enter(system, strategy, symbol, order_type="LIMIT", price=1.0)["command_id"]
    system.wait_until(lambda: (o := system.order(cid)) and o["broker_order_id"], 10, "the resting order")
    assert system.order(cid)["status"] == "SENT_TO_BROKER"
    return cid


def test_backup_of_a_running_service_is_an_openable_copy_with_the_same_orders(make_system, tmp_path):
    system = make_system()
    filled = enter(system, "BK")["command_id"]
    system.wait_for_status(filled, TERMINAL)
    waiting = resting(system, "BK2")
    config = cli_config(tmp_path, system)

    target = tmp_path / "copy.db"
    result = oms("backup", str(target), "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "2 order(s)" in result.stdout and str(target) in result.stdout
    copy = sqlite3.connect(target)
    assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = dict(copy.execute("SELECT command_id, status FROM orders"))
    copy.close()
    assert rows == {filled: system.order(filled)["status"], waiting: "SENT_TO_BROKER"}
    assert not list(tmp_path.glob("copy.db.partial")) and not (tmp_path / "copy.db-wal").exists()

    # the service went on working; a backup never overwrites
    assert system.order(waiting)["status"] == "SENT_TO_BROKER"
    again = oms("backup", str(target), "--config", str(config), cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert dict(sqlite3.connect(target).execute("SELECT command_id, status FROM orders")) == rows


def test_cancel_needs_all_or_a_filter_then_cancels_and_tail_shows_cancelled(make_system, tmp_path):
    system = make_system()
    config = cli_config(tmp_path, system)
    mine = resting(system, "CX")

    bare = oms("cancel", "--config", str(config), cwd=tmp_path)
    assert bare.returncode == 2, bare
    assert len(bare.stderr.strip().splitlines()) == 1 and "--all" in bare.stderr
    assert system.order(mine)["status"] == "SENT_TO_BROKER", "a refused cancel changed nothing"

    done = oms("cancel", "--all", "--config", str(config), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert mine in done.stdout
    order = system.wait_for_status(mine, TERMINAL)
    assert order["status"] == "FAILED" and order["tag"].startswith("BROKER_CANCELED"), order
    system.wait_until(lambda: any(n["command_id"] == mine and n["kind"] == "cancelled"
                                  for n in system.registry.ask("notifier", GetNotifierStats())["recent"]),
                      10, "the cancelled notification")

    def cancelled_line():
        lines = oms("tail", "--command-id", mine, "--config", str(config), cwd=tmp_path).stdout.splitlines()
        return [line for line in lines if "-> FAILED" in line]

    system.wait_until(cancelled_line, 10, "the FAILED event in events.jsonl")
    (line,) = cancelled_line()
    assert "(cancelled)" in line and "rejected" not in line, line


def test_exit_waits_and_prints_how_each_exit_ended(make_system, tmp_path):
    system = make_system()
    config = cli_config(tmp_path, system)
    entry = enter(system, "EX")["command_id"]
    assert system.wait_for_status(entry, TERMINAL)["status"] == "EXECUTED"

    result = oms("exit", "--strategy", "EX", "--wait", "30", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    filled = [line for line in lines if line.startswith("filled")]
    assert len(filled) == 1, result.stdout
    cid = filled[0].split()[1]
    order = system.order(cid)
    assert (order["status"], order["execution_type"], order["strategy_name"]) == ("EXECUTED", "EXIT", "EX")
    assert [o["command_id"] for o in system.orders() if o["execution_type"] == "EXIT"] == [cid]


def test_exit_that_does_not_fill_is_reported_and_exits_1(make_system, paper_factory, tmp_path):
    exchange = paper_factory(enforce_lot_tick=True)  # refuses a quantity that is not a whole number of lots
    system = make_system(exchange=exchange)
    config = cli_config(tmp_path, system)
    entry = enter(system, "EXR")["command_id"]
    assert system.wait_for_status(entry, TERMINAL)["status"] == "EXECUTED"

    result = oms("exit", "--strategy", "EXR", "--qty", "10", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("rejected")]
    cid = line.split()[1]
    order = system.order(cid)
    assert order["status"] == "FAILED" and order["tag"].startswith("BROKER_REJECTED") and order["tag"] in line


def test_tail_counts_after_filters_and_shows_why_an_alert_was_refused(make_system, tmp_path):
    system = make_system()
    config = cli_config(tmp_path, system)
    a_ids = [enter(system, "TA", alert_id=f"ta-{i}")["command_id"] for i in range(3)]
    b_id = enter(system, "TB", alert_id="tb-0")["command_id"]
    for cid in a_ids + [b_id]:
        system.wait_for_status(cid, TERMINAL)
    refused = requests.post(f"{system.url}/webhook", data=b'{"secret_key": "' + SECRET.encode() + b'", "legs": 5}',
                            timeout=5)
    assert refused.status_code == 400

    every_a = oms("tail", "--strategy", "TA", "--config", str(config), cwd=tmp_path).stdout.splitlines()
    assert len(every_a) > 2 and all(" TA " in line for line in every_a), every_a
    last_two = oms("tail", "--strategy", "TA", "-n", "2", "--config", str(config), cwd=tmp_path)
    assert last_two.returncode == 0 and last_two.stdout.splitlines() == every_a[-2:]
    assert oms("tail", "-n", "0", "--config", str(config), cwd=tmp_path).stdout == ""

    def refusal_line():
        lines = oms("tail", "--config", str(config), cwd=tmp_path).stdout.splitlines()
        return [line for line in lines if "ALERT" in line and "(400)" in line]

    system.wait_until(refusal_line, 10, "the refused alert in events.jsonl")
    (line,) = refusal_line()
    reason = line.split("(400): ", 1)[1]
    assert reason and "legs" in reason, line


def test_tail_follow_starts_at_the_end(make_system, tmp_path):
    system = make_system()
    config = cli_config(tmp_path, system)
    old = enter(system, "TF", alert_id="old")["command_id"]
    system.wait_for_status(old, TERMINAL)
    follower = subprocess.Popen([sys.executable, "-m", "runtime.cli", "tail", "--follow", "--config", str(config)],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={"PATH": str(VENV_BIN) + ":/usr/bin:/bin", "HOME": str(tmp_path)},
                                start_new_session=True)
    printed: list[str] = []
    reader = threading.Thread(target=lambda: printed.extend(iter(follower.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        # New alerts until the follower prints one (it may not have reached the end of the file yet).
        new_ids: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(cid in "".join(printed) for cid in new_ids):
            new_ids.append(enter(system, "TF", alert_id=f"new-{len(new_ids)}")["command_id"])
            wait_end = time.monotonic() + 1
            while time.monotonic() < wait_end and not any(cid in "".join(printed) for cid in new_ids):
                time.sleep(0.05)
        seen = "".join(printed)
        assert any(cid in seen for cid in new_ids), f"the follower printed no new event: {seen!r}"
        assert old not in seen and "ALERT old" not in seen, seen
    finally:
        os.killpg(follower.pid, signal.SIGTERM)
        assert follower.wait(timeout=10) == 0, follower.stderr.read()
