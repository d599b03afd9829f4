"""Every flatten ends (issue 10, point 5), through the whole service against the real paper exchange.

A position no strategy holds is placed by hand at the paper exchange with the official NorenRestApiPy client,
on the service's own account: the flatten cannot exit it, retries it for `flatten_max_rounds` PositionBook
rounds, then ends and names it once. A flatten never squares off an ENTRY registered after it started; resume
ends a manual flatten, `POST /risk/flatten/stop` and `oms risk stop-flatten` end any; a breach stays HALTED."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import requests
from NorenRestApiPy.NorenApi import NorenApi

from storage.db import close_database, open_database
from storage.models import RiskState
from tests.conftest import SECRET, alert, set_ltp
from tests.symbols import NIFTY_CE, NIFTY_PE
from tests.test_risk_engine import netqty, risk, risk_exits, risk_notes, wait_risk

TERMINAL = ("EXECUTED", "FAILED")
GAVE_UP = "could not exit"


def by_hand(exchange, tsym: str, side: str = "B", qty: int = 65, price: float = 150.0) -> None:
    """An order on the service's account (TEST1) that is not ours: the official client, our remarks absent."""
    api = NorenApi(host=exchange.rest_url, websocket=exchange.ws_url)
    reply = api.login(userid="TEST1", password="pw", twoFA="123456", vendor_code="VC", api_secret="s", imei="hand")
    assert reply and reply["stat"] == "Ok", reply
    placed = api.place_order(side, "M", "NFO", tsym, qty, 0, "LMT", price=price, remarks="placed by hand")
    assert placed and placed["stat"] == "Ok", placed


def entry(system, strategy: str, tsym: str, alert_id: str) -> dict:
    status, body = system.inject_alert(alert(strategy=strategy, alert_id=alert_id, tradingsymbol=tsym))
    assert status == 202, body
    return system.wait_for_status(body["orders"][0]["command_id"], TERMINAL)


def post(system, path: str, body: dict | None = None, token: str | None = "operator") -> requests.Response:
    """An operator POST: with the service's operator token, with `token` (a wrong one), or with none."""
    headers = system.operator_headers if token == "operator" else (
        {"Authorization": f"Bearer {token}"} if token else {})
    return requests.post(f"{system.url}{path}", headers=headers, json=dict(body or {}), timeout=10)


def job(system) -> dict:
    jobs = risk(system)["flatten"]
    assert len(jobs) == 1, jobs
    return jobs[0]


def more_rounds(system, n: int, what: str) -> None:
    """Wait until the running job has done n more PositionBook rounds."""
    start = job(system)["rounds"]
    wait_risk(system, lambda v: v["flatten"] and v["flatten"][0]["rounds"] >= start + n, what)


def gave_up_notes(system) -> list[str]:
    return [n for n in risk_notes(system) if GAVE_UP in n]


def oms(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], check=False, cwd=cwd, capture_output=True,
                          text=True, timeout=30)


def cli_config(system, tmp_path: Path) -> str:
    path = tmp_path / "cli.toml"
    path.write_text(f'[service]\nport = {system.port}\n[operator]\ntoken = "{system.operator_token}"\n', encoding="utf-8")
    return str(path)


def setup_prices(paper) -> None:
    set_ltp(paper, "NFO", NIFTY_CE, 100)
    set_ltp(paper, "NFO", NIFTY_PE, 100)


def test_oms_exit_flatten_with_an_external_position_ends_after_its_rounds_and_names_it_once(make_system, paper,
                                                                                             tmp_path):
    setup_prices(paper)
    system = make_system(risk={"pnl_poll_interval_s": 0.2, "flatten_max_rounds": 4})
    assert entry(system, "S1", NIFTY_CE, "s1")["status"] == "EXECUTED"
    by_hand(paper, NIFTY_PE)
    system.wait_until(lambda: netqty(paper, NIFTY_PE) == 65, 10, "the external position")

    flat = oms("exit", "--flatten", "--all", "--config", cli_config(system, tmp_path), cwd=tmp_path)
    assert flat.returncode == 0 and flat.stdout.startswith("flatten started"), (flat.stdout, flat.stderr)
    view = wait_risk(system, lambda v: v["flatten"] == [], "the flatten to end", timeout=20)
    assert (view["state"], view["reason"]) == ("REDUCING", "REDUCING_ONLY")  # --all: nothing refills it

    exits = risk_exits(system)
    assert [(o["strategy_name"], o["symbol"], o["side"], o["quantity"]) for o in exits] == [
        ("S1", NIFTY_CE, "SELL", 65)]
    assert system.wait_for_status(exits[0]["command_id"], TERMINAL)["status"] == "EXECUTED"
    notes = gave_up_notes(system)
    assert len(notes) == 1 and f"NFO:{NIFTY_PE} NRML +65 held by no strategy" in notes[0], notes
    assert "after 4 rounds" in notes[0], notes
    seen: set[str] = set()  # more PositionBook reads: nothing further is reported, tried or exited
    wait_risk(system, lambda v: seen.add(v["pnl_at"] or "") or len(seen - {""}) >= 4, "four more reads")
    assert len(gave_up_notes(system)) == 1 and len(risk_exits(system)) == 1
    assert netqty(paper, NIFTY_CE) == 0 and netqty(paper, NIFTY_PE) == 65  # the external position is yours


def test_an_entry_registered_after_the_start_is_never_squared_off_and_flatten_stop_ends_the_job(
        make_system, paper):
    setup_prices(paper)
    # The risk clock runs 30 hours ahead of the wall clock: the job's start must be compared with created_at
    # (wall clock), or every later entry would look older than the job.
    system = make_system(clock=lambda: datetime.now(UTC) + timedelta(hours=30),
                         risk={"pnl_poll_interval_s": 0.2, "flatten_max_rounds": 1000})
    assert entry(system, "S1", NIFTY_CE, "before")["status"] == "EXECUTED"
    by_hand(paper, NIFTY_PE)  # keeps the exchange's flatten running: no strategy holds it
    system.wait_until(lambda: netqty(paper, NIFTY_PE) == 65, 10, "the external position")

    reply = post(system, "/risk/flatten", {"exchange": "NFO"})
    assert reply.status_code == 200 and reply.json()["flatten_started"] is True
    assert reply.json()["state"] == "ACTIVE"  # an exchange's flatten does not stop entries
    first = system.wait_until(lambda: risk_exits(system), 10, "the flatten's exit")
    assert system.wait_for_status(first[0]["command_id"], TERMINAL)["status"] == "EXECUTED"
    system.wait_until(lambda: netqty(paper, NIFTY_CE) == 0, 10, "S1 flat at the broker")

    later = entry(system, "S1", NIFTY_CE, "after")  # the same strategy and symbol, after the start
    assert later["status"] == "EXECUTED"
    more_rounds(system, 6, "six rounds after the later entry filled")
    assert system.order(later["command_id"])["status"] == "EXECUTED"
    assert [o["command_id"] for o in risk_exits(system)] == [first[0]["command_id"]]
    assert netqty(paper, NIFTY_CE) == 65 and netqty(paper, NIFTY_PE) == 65

    assert post(system, "/risk/flatten/stop", token=None).status_code == 401
    assert post(system, "/risk/flatten/stop", token="wrong").status_code == 401
    assert len(risk(system)["flatten"]) == 1  # a refused stop changes nothing
    reply = post(system, "/risk/flatten/stop")
    assert reply.status_code == 200
    body = reply.json()
    assert body["flatten"] == [] and [j["reason"] for j in body["flatten_stopped"]] == ["MANUAL"]
    assert any("ended by the operator" in n for n in risk_notes(system))
    assert gave_up_notes(system) == []


def test_resume_ends_a_manual_flatten_and_oms_risk_stop_flatten_ends_one(make_system, paper, tmp_path):
    setup_prices(paper)
    system = make_system(risk={"pnl_poll_interval_s": 0.2, "flatten_max_rounds": 1000})
    by_hand(paper, NIFTY_PE)
    system.wait_until(lambda: netqty(paper, NIFTY_PE) == 65, 10, "the external position")

    reply = post(system, "/risk/flatten")  # the whole account: REDUCING too
    assert reply.status_code == 200 and reply.json()["state"] == "REDUCING"
    more_rounds(system, 2, "the flatten running")
    resumed = post(system, "/risk/resume")
    assert resumed.status_code == 200
    assert (resumed.json()["state"], resumed.json()["flatten"]) == ("ACTIVE", [])
    assert any("ended by resume" in n for n in risk_notes(system))
    kept = entry(system, "S1", NIFTY_CE, "after-resume")
    assert kept["status"] == "EXECUTED"

    config = cli_config(system, tmp_path)
    none = oms("risk", "stop-flatten", "--config", config, cwd=tmp_path)
    assert none.returncode == 0 and "no flatten was running" in none.stdout, (none.stdout, none.stderr)
    assert post(system, "/risk/flatten", {"exchange": "NFO"}).json()["flatten_started"] is True
    more_rounds(system, 2, "the second flatten running")
    stopped = oms("risk", "stop-flatten", "--config", config, cwd=tmp_path)
    assert stopped.returncode == 0 and "1 flatten job(s) stopped" in stopped.stdout, (stopped.stdout, stopped.stderr)
    assert risk(system)["flatten"] == []
    # S1's entry was registered before this second flatten; whatever it did, it ended on request
    assert netqty(paper, NIFTY_PE) == 65


def test_a_breach_flatten_that_cannot_finish_ends_and_the_day_stays_halted(make_system, paper):
    setup_prices(paper)
    system = make_system(risk={"max_daily_loss": 1000, "pnl_poll_interval_s": 0.2, "flatten_max_rounds": 4})
    by_hand(paper, NIFTY_PE, price=110)  # bought at 100 (the last price)
    system.wait_until(lambda: netqty(paper, NIFTY_PE) == 65, 10, "the external position")
    set_ltp(paper, "NFO", NIFTY_PE, 80)  # -1300: breach
    wait_risk(system, lambda v: v["state"] == "HALTED", "the breach")
    view = wait_risk(system, lambda v: v["flatten"] == [], "the breach flatten to give up", timeout=20)
    assert (view["state"], view["reason"]) == ("HALTED", "DAILY_LOSS_HIT")
    notes = gave_up_notes(system)
    assert len(notes) == 1 and "DAILY_LOSS_HIT" in notes[0] and f"NFO:{NIFTY_PE}" in notes[0], notes
    assert risk_exits(system) == [] and netqty(paper, NIFTY_PE) == 65

    assert post(system, "/risk/resume").status_code == 409  # the breach holds for the day
    blocked = entry(system, "S1", NIFTY_CE, "after-breach")
    assert (blocked["status"], blocked["tag"]) == ("FAILED", "RISK_BLOCKED:DAILY_LOSS_HIT")
    assert risk(system)["state"] == "HALTED"


def test_a_job_keeps_its_start_across_restarts_and_an_old_job_starts_at_load(make_system, paper, tmp_path):
    setup_prices(paper)
    data_dir = tmp_path / "restart"
    limits = {"pnl_poll_interval_s": 0.2, "flatten_max_rounds": 1000}
    system = make_system(data_dir=data_dir, risk=limits)
    by_hand(paper, NIFTY_PE)
    system.wait_until(lambda: netqty(paper, NIFTY_PE) == 65, 10, "the external position")
    assert post(system, "/risk/flatten", {"exchange": "NFO"}).json()["flatten_started"] is True
    started = job(system)
    assert started["started_at"] and started["orders_before"]
    more_rounds(system, 2, "rounds before the restart")
    system.stop()

    system = make_system(data_dir=data_dir, risk=limits)
    again = job(system)  # as persisted, before any read of the new process
    assert (again["started_at"], again["orders_before"]) == (started["started_at"], started["orders_before"])
    assert again["rounds"] >= 2
    later = entry(system, "S1", NIFTY_CE, "after-restart")  # after the start: not the job's
    assert later["status"] == "EXECUTED"
    more_rounds(system, 5, "rounds after the later entry")
    assert risk_exits(system) == [] and netqty(paper, NIFTY_CE) == 65
    system.stop()

    # A job saved before jobs recorded their start counts as started at load: S1's entry, registered before
    # that, is the job's to exit.
    loaded_after = datetime.now(UTC).isoformat(timespec="microseconds")
    db = open_database(data_dir / "orders.db")
    legacy = {"jobs": [{"strategy": None, "exchange": "NFO", "products": ["NRML", "MIS"], "reason": "MANUAL",
                        "rounds": 0, "idle_reads": 0}]}
    RiskState.update(value=json.dumps(legacy)).where(
        (RiskState.client_id == "paper") & (RiskState.key == "flatten")).execute()
    close_database(db)
    system = make_system(data_dir=data_dir, risk=limits)
    old = job(system)
    assert old["started_at"] >= loaded_after and old["orders_before"] >= loaded_after
    exits = system.wait_until(lambda: risk_exits(system), 10, "the old job's exit")
    assert [(o["strategy_name"], o["symbol"], o["side"], o["quantity"]) for o in exits] == [
        ("S1", NIFTY_CE, "SELL", 65)]
    assert system.wait_for_status(exits[0]["command_id"], TERMINAL)["status"] == "EXECUTED"
    assert netqty(paper, NIFTY_CE) == 0 and netqty(paper, NIFTY_PE) == 65
