"""RiskActor against the real paper exchange and a real SQLite file: the whole service in-process
(`make_system(risk={...})`), prices moved with POST /paper/ltp, waits on conditions with deadlines."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from pathlib import Path

import pyotp
import requests

from actors import risk_rules as R
from runtime.noren.rest import NorenRestClient
from storage.db import close_database, open_database
from storage.models import RiskState
from tests.conftest import SECRET, alert, paper_orders, set_ltp
from tests import symbols as sym
from tests.symbols import NIFTY_CE, NIFTY_PE

SYM = NIFTY_CE
PUT = NIFTY_PE
FIN = sym.option("FINNIFTY", "C", 24000)  # the paper exchange's FINNIFTY lot is 60; the built-in table says 65
FAST = {"pnl_poll_interval_s": 0.2}
TERMINAL = ("EXECUTED", "FAILED")


def one_leg(system, payload) -> str:
    status, body = system.inject_alert(payload)
    assert status == 202, (status, body)
    assert len(body["orders"]) == 1
    return body["orders"][0]["command_id"]


def risk(system) -> dict:
    reply = requests.get(f"{system.url}/risk", headers=system.operator_headers, timeout=5)
    assert reply.status_code == 200
    return reply.json()


def wait_risk(system, predicate, what: str, timeout: float = 10.0) -> dict:
    return system.wait_until(lambda: (view := risk(system)) and predicate(view) and view, timeout, what)


def risk_notes(system) -> list[str]:
    return [n["text"] for n in system.notifications()["recent"] if n["kind"] == "risk"]


def netqty(exchange, tsym: str) -> int:
    client = NorenRestClient(exchange.rest_url)
    client.login_quickauth("TEST1", "pw", pyotp.random_base32(), "VC", "secret", "imei")
    try:
        return sum(p.netqty for p in client.position_book() if p.tsym == tsym)
    finally:
        client.close()


def blocked_with(system, payload, reason: str) -> dict:
    order = system.wait_for_status(one_leg(system, payload), TERMINAL)
    assert (order["status"], order["tag"]) == ("FAILED", f"RISK_BLOCKED:{reason}"), order
    return order


def risk_exits(system) -> list[dict]:
    return [o for o in system.orders() if o["source"] == "risk"]


# ---- daily max loss: warning, breach, flatten, restart ---------------------------------------------

def test_warning_then_breach_halts_flattens_and_survives_a_restart(make_system, paper, tmp_path):
    data_dir = tmp_path / "breach"
    limits = {"max_daily_loss": 1000, "warning_at": 0.5, **FAST}
    set_ltp(paper, "NFO", SYM, 100)
    system = make_system(data_dir=data_dir, risk=limits)
    long = system.wait_for_status(one_leg(system, alert(alert_id="long")), "EXECUTED")
    assert long["avg_price"] == 100
    resting = one_leg(system, alert(strategy="S2", alert_id="rest", tradingsymbol=PUT, order_type="LIMIT", price=1.0))
    system.wait_until(lambda: system.order(resting)["broker_order_id"], 10, "the resting entry at the broker")

    set_ltp(paper, "NFO", SYM, 95)  # -325: nothing yet
    wait_risk(system, lambda v: v["pnl"] == -325, "PnL -325")
    set_ltp(paper, "NFO", SYM, 92)  # -520: 52% of the limit
    view = wait_risk(system, lambda v: v["warned"], "the warning")
    assert (view["state"], view["pnl"], view["loss_floor"], view["headroom"]) == ("ACTIVE", -520, -1000, 480)
    set_ltp(paper, "NFO", SYM, 91)
    wait_risk(system, lambda v: v["pnl"] == -585, "PnL -585")

    set_ltp(paper, "NFO", SYM, 84)  # -1040: breach
    view = wait_risk(system, lambda v: v["state"] == "HALTED", "the breach")
    assert view["reason"] == "DAILY_LOSS_HIT" and view["breached_at"]
    # The flatten: the resting entry is cancelled, the long is sold through the pipeline, the book ends flat.
    cancelled = system.wait_for_status(resting, "FAILED")
    assert cancelled["tag"] == "BROKER_CANCELED"
    exits = system.wait_until(lambda: risk_exits(system), 10, "the flatten's exit")
    assert [(o["strategy_name"], o["execution_type"], o["side"], o["quantity"], o["product"]) for o in exits] == [
        ("S1", "EXIT", "SELL", 65, "NRML")]
    assert system.wait_for_status(exits[0]["command_id"], TERMINAL)["status"] == "EXECUTED"
    wait_risk(system, lambda v: v["flatten"] == [], "the flatten to finish", timeout=15)
    assert netqty(paper, SYM) == 0 and netqty(paper, PUT) == 0
    notes = risk_notes(system)
    assert sum("Risk warning" in n for n in notes) == 1, notes
    assert any("Daily max loss hit" in n for n in notes) and any("done" in n and "flat" in n for n in notes), notes

    blocked_with(system, alert(strategy="S3", alert_id="after-breach"), "DAILY_LOSS_HIT")
    exit_cid = one_leg(system, alert(strategy="S3", alert_id="exit-after", execution_type="EXIT", direction="SELL"))
    assert system.wait_for_status(exit_cid, TERMINAL)["tag"] == "GUARD_BLOCKED:NO_POSITION"  # risk let it pass
    assert requests.post(f"{system.url}/risk/resume", headers=system.operator_headers, json={"secret_key": SECRET}, timeout=5).json()["state"] == "HALTED"  # not today

    system.stop()
    system = make_system(data_dir=data_dir, risk=limits)
    view = risk(system)  # before any PositionBook read of the new process
    assert (view["state"], view["reason"]) == ("HALTED", "DAILY_LOSS_HIT")
    blocked_with(system, alert(strategy="S4", alert_id="after-restart"), "DAILY_LOSS_HIT")
    wait_risk(system, lambda v: v["pnl_known"] and v["pnl"] == -1040, "the realised PnL read again")
    assert len(risk_exits(system)) == 1  # nothing exited twice


def test_a_breach_found_at_start_up_flattens(make_system, paper, tmp_path):
    data_dir = tmp_path / "late"
    limits = {"max_daily_loss": 500, **FAST}
    set_ltp(paper, "NFO", SYM, 200)
    system = make_system(data_dir=data_dir, risk=limits)
    system.wait_for_status(one_leg(system, alert(alert_id="held", direction="SELL")), "EXECUTED")
    system.stop()
    set_ltp(paper, "NFO", SYM, 210)  # short 65: -650 while the service is down
    system = make_system(data_dir=data_dir, risk=limits)
    wait_risk(system, lambda v: v["state"] == "HALTED" and v["flatten"] == [], "breach and flatten", timeout=15)
    exits = risk_exits(system)
    assert [(o["side"], o["quantity"], o["status"]) for o in exits] == [("BUY", 65, "EXECUTED")]
    assert netqty(paper, SYM) == 0


# ---- per-order limits ------------------------------------------------------------------------------

def test_lots_use_the_broker_lot_size_and_notional_uses_the_last_price(make_system, paper):
    set_ltp(paper, "NFO", SYM, 100)
    set_ltp(paper, "NFO", FIN, 100)
    system = make_system(risk={"max_lots_per_order": 2, "max_notional_per_order": 10_000})
    blocked_with(system, alert(strategy="A", qty=195), "MAX_LOTS_EXCEEDED")  # 3 lots of 65
    # 130 FINNIFTY: 3 lots of the broker's 60 (the table's 65 would have let it through)
    blocked_with(system, alert(strategy="B", tradingsymbol=FIN, qty=130), "MAX_LOTS_EXCEEDED")
    blocked_with(system, alert(strategy="C", qty=130), "MAX_NOTIONAL_EXCEEDED")  # 130 x 100 from GetQuotes
    blocked_with(system, alert(strategy="D", qty=65, order_type="LIMIT", price=160), "MAX_NOTIONAL_EXCEEDED")
    ok = system.wait_for_status(one_leg(system, alert(strategy="E", tradingsymbol=FIN, qty=60)), TERMINAL)
    assert ok["status"] == "EXECUTED", ok
    exit_cid = one_leg(system, alert(strategy="E", tradingsymbol=FIN, qty=600, execution_type="EXIT", direction="SELL"))
    assert system.wait_for_status(exit_cid, TERMINAL)["status"] == "EXECUTED"  # exits are never checked


def test_max_open_positions_counts_the_book_and_entries_in_flight(make_system, paper):
    set_ltp(paper, "NFO", SYM, 100)
    system = make_system(risk={"max_open_positions": 1, **FAST})
    resting = one_leg(system, alert(strategy="A", alert_id="rest", order_type="LIMIT", price=1.0))
    system.wait_until(lambda: system.order(resting)["broker_order_id"], 10, "the resting entry")
    blocked_with(system, alert(strategy="B", alert_id="second", tradingsymbol=PUT), "MAX_OPEN_POSITIONS")
    requests.post(f"{system.url}/risk/flatten", headers=system.operator_headers, json={"secret_key": SECRET, "strategy": "A"}, timeout=10)
    assert system.wait_for_status(resting, "FAILED")["tag"] == "BROKER_CANCELED"
    wait_risk(system, lambda v: v["open_positions"] == 0 and v["flatten"] == [], "nothing open")
    held = system.wait_for_status(one_leg(system, alert(strategy="B", alert_id="third", tradingsymbol=PUT)),
                                  TERMINAL)
    assert held["status"] == "EXECUTED"
    blocked_with(system, alert(strategy="C", alert_id="fourth"), "MAX_OPEN_POSITIONS")  # the filled PUT counts


def test_entry_rate_per_alert_and_per_minute(make_system, paper):
    system = make_system(risk={"max_entries_per_second": 2, "max_entries_per_minute": 3})
    legs = [{"tradingsymbol": s, "direction": "BUY", "qty": 65, "order_type": "LIMIT", "price": 1.0}
            for s in (SYM, PUT, sym.option("NIFTY", "C", 26000))]
    status, body = system.inject_alert(alert(strategy="WIDE", alert_id="wide", legs=legs))
    assert status == 202
    tags = [system.wait_for_status(o["command_id"], TERMINAL)["tag"] for o in body["orders"]]
    assert tags == ["RISK_BLOCKED:ENTRY_RATE_PER_SECOND"] * 3  # all legs or none
    cids = [one_leg(system, alert(strategy=f"R{i}", alert_id=f"r{i}", order_type="LIMIT", price=1.0,
                                  tradingsymbol=s)) for i, s in enumerate((SYM, PUT))]
    for cid in cids:
        system.wait_until(lambda c=cid: system.order(c)["broker_order_id"], 10, "the entry at the broker")
    system.wait_until(lambda: risk(system)["entries_last_second"] == 0, 5, "the second to pass")
    third = one_leg(system, alert(strategy="R2", alert_id="r2", order_type="LIMIT", price=1.0, tradingsymbol=SYM))
    system.wait_until(lambda: system.order(third)["broker_order_id"], 10, "the third entry at the broker")
    blocked_with(system, alert(strategy="R3", alert_id="r3", tradingsymbol=PUT), "ENTRY_RATE_PER_MINUTE")


# ---- trading states over HTTP and the command line --------------------------------------------------

def test_reduce_flatten_resume_over_http(make_system, paper):
    set_ltp(paper, "NFO", SYM, 100)
    system = make_system(risk=FAST)
    view = risk(system)
    assert view["state"] == "ACTIVE" and view["limits"]["enforce_trading_hours"] is False  # paper: off
    system.wait_for_status(one_leg(system, alert(strategy="S1", alert_id="s1")), "EXECUTED")
    system.wait_for_status(one_leg(system, alert(strategy="S2", alert_id="s2", tradingsymbol=PUT)), "EXECUTED")

    assert requests.post(f"{system.url}/risk/reduce", json={}, timeout=5).status_code == 401
    assert requests.post(f"{system.url}/risk/flatten", json={"secret_key": SECRET}, timeout=5).status_code == 401
    assert requests.post(f"{system.url}/risk/flatten", headers={"Authorization": "Bearer wrong"},
                         timeout=5).status_code == 401
    assert requests.post(f"{system.url}/risk/flatten", headers=system.operator_headers, json={"secret_key": SECRET, "exchange": "XX"},
                         timeout=5).status_code == 400
    reply = requests.post(f"{system.url}/risk/reduce", headers=system.operator_headers, json={"secret_key": SECRET}, timeout=5)
    assert reply.status_code == 200 and (reply.json()["state"], reply.json()["reason"]) == ("REDUCING", "REDUCING_ONLY")
    blocked_with(system, alert(strategy="S3", alert_id="s3"), "REDUCING_ONLY")

    reply = requests.post(f"{system.url}/risk/flatten", headers=system.operator_headers, json={"secret_key": SECRET, "strategy": "S2"}, timeout=10)
    assert reply.status_code == 200 and reply.json()["flatten_started"] is True
    wait_risk(system, lambda v: v["flatten"] == [], "the S2 flatten")
    assert [(o["strategy_name"], o["symbol"], o["status"]) for o in risk_exits(system)] == [("S2", PUT, "EXECUTED")]
    assert netqty(paper, PUT) == 0 and netqty(paper, SYM) == 65  # S1 untouched

    assert requests.post(f"{system.url}/risk/halt", headers=system.operator_headers, json={"secret_key": SECRET}, timeout=5).json()["state"] == "HALTED"
    assert requests.post(f"{system.url}/risk/resume", headers=system.operator_headers, json={"secret_key": SECRET}, timeout=5).json()["state"] == "ACTIVE"
    assert system.wait_for_status(one_leg(system, alert(strategy="S4", alert_id="s4", tradingsymbol=PUT)),
                                  TERMINAL)["status"] == "EXECUTED"


def oms(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], check=False, cwd=cwd, capture_output=True,
                          text=True, timeout=30)


def test_oms_risk_and_oms_exit_drive_the_running_service(make_system, paper, tmp_path):
    set_ltp(paper, "NFO", SYM, 100)
    system = make_system(risk={"max_daily_loss": 5000, **FAST})
    system.wait_for_status(one_leg(system, alert(strategy="S1", alert_id="s1")), "EXECUTED")
    config = tmp_path / "cli.toml"
    config.write_text(f'[service]\nport = {system.port}\n[operator]\ntoken = "{system.operator_token}"\n', encoding="utf-8")

    status = oms("risk", "status", "--config", str(config), cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith("state      ACTIVE") and "loss floor -5,000.00" in status.stdout
    halted = oms("risk", "halt", "--config", str(config), "--json", cwd=tmp_path)
    assert halted.returncode == 0 and '"state": "HALTED"' in halted.stdout
    assert oms("exit", "--config", str(config), cwd=tmp_path).returncode == 2  # needs a scope
    flat = oms("exit", "--all", "--flatten", "--config", str(config), cwd=tmp_path)
    assert flat.returncode == 0 and flat.stdout.startswith("flatten started"), flat.stderr
    wait_risk(system, lambda v: v["flatten"] == [], "the flatten")
    assert netqty(paper, SYM) == 0
    resumed = oms("risk", "resume", "--config", str(config), cwd=tmp_path)
    assert resumed.returncode == 0 and "ACTIVE" in resumed.stdout

    down = tmp_path / "down.toml"
    down.write_text('[service]\nport = 1\n', encoding="utf-8")
    unreachable = oms("risk", "status", "--config", str(down), cwd=tmp_path)
    assert unreachable.returncode == 1 and "cannot reach the service" in unreachable.stderr


# ---- multi-day state --------------------------------------------------------------------------------

def test_a_cooldown_persisted_on_earlier_days_blocks_entries_after_a_restart(make_system, paper, tmp_path):
    data_dir = tmp_path / "cooldown"
    today = R.trading_day(datetime.now(UTC))
    last = R.previous_trading_day(today)
    first = R.previous_trading_day(last)
    db = open_database(data_dir / "orders.db")
    for day, pnl in ((first, -1200.0), (last, -300.0)):
        RiskState.create(client_id="paper", key=f"day:{day.isoformat()}",
                         value=R.DayState(day, pnl=pnl).to_json(), updated_at="2026-01-01T00:00:00+00:00")
    close_database(db)

    system = make_system(data_dir=data_dir, risk={"max_loss_days": 2})
    view = risk(system)
    assert (view["state"], view["reason"]) == ("HALTED", "LOSS_DAYS_COOLDOWN")
    assert view["cooldown_until"] == R.cooldown_until(last).isoformat()
    blocked_with(system, alert(alert_id="cool"), "LOSS_DAYS_COOLDOWN")
    assert paper_orders(paper) == []
    assert any("consecutive loss days" in n for n in risk_notes(system))
    system.stop()
    system = make_system(data_dir=data_dir, risk={"max_loss_days": 2})
    assert risk(system)["reason"] == "LOSS_DAYS_COOLDOWN"  # evaluated once, persisted


def ist_clock(weekday: int, hh: int, mm: int):
    """A risk clock: the next IST `weekday` (0 = Monday) strictly after today's IST date, at hh:mm IST, advancing
    with real elapsed time (rate windows keep working). Always ahead of the wall clock, so entries the service
    wrote in real time before it started are not "from the future" for the risk engine."""
    today = R.trading_day(datetime.now(UTC))
    day = today + timedelta(days=(weekday - today.weekday() - 1) % 7 + 1)
    base = datetime.combine(day, dtime(hh, mm), R.IST).astimezone(UTC)
    start = time.monotonic()
    return lambda: base + timedelta(seconds=time.monotonic() - start)


def test_after_square_off_time_entries_stop_and_mis_positions_are_flattened(make_system, paper, tmp_path):
    data_dir = tmp_path / "square"
    set_ltp(paper, "NFO", SYM, 100)
    set_ltp(paper, "NFO", PUT, 100)
    system = make_system(data_dir=data_dir)
    mis = system.wait_for_status(one_leg(system, alert(strategy="MIS1", alert_id="m", product_type="MIS")), "EXECUTED")
    system.wait_for_status(one_leg(system, alert(strategy="NRML1", alert_id="n", tradingsymbol=PUT)), "EXECUTED")
    system.stop()

    clock = ist_clock(2, 15, 16)  # a Wednesday, 15:16 IST: one minute after the NFO square-off
    wednesday = R.trading_day(clock())
    assert wednesday.weekday() == 2 and R.is_trading_day(wednesday)
    system = make_system(data_dir=data_dir, clock=clock, risk={"square_off_time": {"NFO": "15:15"}, **FAST})
    assert risk(system)["day"] == wednesday.isoformat()  # the risk engine runs on the injected clock
    blocked_with(system, alert(strategy="LATE", alert_id="late"), "AFTER_SQUARE_OFF")
    blocked_with(system, alert(strategy="LATE2", alert_id="late-mis", tradingsymbol=PUT, product_type="MIS"),
                 "AFTER_SQUARE_OFF")

    exits = system.wait_until(lambda: risk_exits(system), 10, "the square-off exit")
    assert [(o["strategy_name"], o["execution_type"], o["symbol"], o["side"], o["quantity"], o["product"])
            for o in exits] == [("MIS1", "EXIT", SYM, "SELL", 65, "MIS")]
    done = system.wait_for_status(exits[0]["command_id"], TERMINAL)
    assert done["status"] == "EXECUTED" and done["filled_qty"] == 65 and done["broker_order_id"], done
    # through the pipeline: committed SENT_TO_BROKER before it left, then the broker's fill
    assert [e["to_status"] for e in done["events"]] == ["CREATED", "SENT_TO_BROKER", "EXECUTED"], done["events"]
    assert done["created_at"] > mis["created_at"]  # real time, not the risk clock's Wednesday
    view = wait_risk(system, lambda v: v["flatten"] == [], "the square-off to finish", timeout=15)
    assert netqty(paper, SYM) == 0
    assert netqty(paper, PUT) == 65  # NRML is carried, never squared off
    assert (view["state"], view["reason"]) == ("ACTIVE", None)
    assert [(o["strategy_name"], o["product"], o["status"]) for o in risk_exits(system)] == [
        ("MIS1", "MIS", "EXECUTED")]  # once a day: further PositionBook reads start no new square-off
    notes = risk_notes(system)
    assert any("Flatten started (SQUARE_OFF)" in n for n in notes), notes
    assert any("Flatten (SQUARE_OFF) done" in n and "flat" in n for n in notes), notes
    sells = [o for o in paper_orders(paper) if o["tsym"] == SYM and o["trantype"] == "S"]
    assert [(o["prd"], o["qty"], o["status"]) for o in sells] == [("I", "65", "COMPLETE")]


# ---- a restart in the middle of a flatten ----------------------------------------------------------

def test_a_restart_mid_flatten_keeps_flattening_and_exits_nothing_twice(make_system, paper_factory, tmp_path):
    slow = paper_factory(fill_delay_ms=800)  # time to move the price between the exit's send and its fill
    data_dir = tmp_path / "midflatten"
    # Every read while the exit rests is a round; plenty of them, so the job waits here rather than gives up.
    limits = {"max_daily_loss": 1000, "flatten_max_rounds": 1000, **FAST}
    set_ltp(slow, "NFO", SYM, 100)
    system = make_system(exchange=slow, data_dir=data_dir, risk=limits)
    system.wait_for_status(one_leg(system, alert(alert_id="long")), "EXECUTED")

    set_ltp(slow, "NFO", SYM, 84)  # -1040: breach
    exits = system.wait_until(lambda: risk_exits(system), 10, "the flatten's exit")
    assert [(o["strategy_name"], o["side"], o["quantity"], o["product"]) for o in exits] == [("S1", "SELL", 65, "NRML")]
    exit_cid = exits[0]["command_id"]
    # Market protection priced it (from GetQuotes, at 84) before the SENT_TO_BROKER commit: LMT 79.80. The
    # price now falls under that limit before the paper's fill delay is up, so the exit rests at the broker.
    system.wait_for_status(exit_cid, ("SENT_TO_BROKER", "PARTIAL", "EXECUTED", "FAILED"))
    set_ltp(slow, "NFO", SYM, 50)
    resting = system.wait_until(lambda: (o := system.order(exit_cid)) and o["broker_order_id"] and o, 10,
                                "the exit at the broker")
    assert (resting["status"], resting["filled_qty"]) == ("SENT_TO_BROKER", 0), resting
    sent = [e["detail"] for e in resting["events"] if e["to_status"] == "SENT_TO_BROKER"]
    assert len(sent) == 1 and "LMT 79.80" in sent[0], sent
    view = risk(system)
    assert (view["state"], view["reason"]) == ("HALTED", "DAILY_LOSS_HIT")
    assert [j["reason"] for j in view["flatten"]] == ["DAILY_LOSS_HIT"]
    system.stop()

    system = make_system(exchange=slow, data_dir=data_dir, risk=limits)
    view = risk(system)  # the persisted state, before any PositionBook read of the new process
    assert (view["state"], view["reason"]) == ("HALTED", "DAILY_LOSS_HIT")
    assert [(j["reason"], j["strategy"], j["exchange"]) for j in view["flatten"]] == [("DAILY_LOSS_HIT", None, None)]
    # a few PositionBook rounds of the new process while the exit rests: it waits for it, sends nothing new
    seen: set[str] = set()
    wait_risk(system, lambda v: seen.add(v["pnl_at"] or "") or len(seen - {""}) >= 3, "three PositionBook reads")
    view = risk(system)
    assert view["flatten"] and view["pnl"] == -3250, view
    assert [o["command_id"] for o in risk_exits(system)] == [exit_cid]
    assert system.order(exit_cid)["status"] == "SENT_TO_BROKER"

    set_ltp(slow, "NFO", SYM, 84)  # the exit's limit is reachable again
    assert system.wait_for_status(exit_cid, TERMINAL, timeout=10)["status"] == "EXECUTED"
    view = wait_risk(system, lambda v: v["flatten"] == [], "the flatten to finish", timeout=15)
    assert (view["state"], view["reason"]) == ("HALTED", "DAILY_LOSS_HIT")
    assert netqty(slow, SYM) == 0
    exits = risk_exits(system)
    assert [(o["command_id"], o["status"], o["filled_qty"]) for o in exits] == [(exit_cid, "EXECUTED", 65)]
    sells = [o for o in paper_orders(slow) if o["tsym"] == SYM and o["trantype"] == "S"]
    assert [(o["qty"], o["fillshares"], o["status"]) for o in sells] == [("65", "65", "COMPLETE")]
    assert any("done" in n and "flat" in n for n in risk_notes(system))


def test_entries_before_a_restart_leave_the_rate_window_on_an_injected_clock(make_system, paper, tmp_path):
    data_dir = tmp_path / "rates"
    system = make_system(data_dir=data_dir)
    for i in range(2):
        cid = one_leg(system, alert(strategy=f"R{i}", alert_id=f"r{i}", order_type="LIMIT", price=1.0))
        system.wait_until(lambda c=cid: system.order(c)["broker_order_id"], 10, "the entry at the broker")
    system.stop()

    today = R.trading_day(datetime.now(UTC))
    wednesday = today - timedelta(days=(today.weekday() - 2) % 7 or 7)  # the last Wednesday before today
    base = datetime.combine(wednesday, dtime(11, 0), R.IST).astimezone(UTC)
    start = time.monotonic()
    system = make_system(data_dir=data_dir, clock=lambda: base + timedelta(seconds=time.monotonic() - start),
                         risk={"max_entries_per_second": 2})
    wait_risk(system, lambda v: v["entries_last_second"] == 0, "the second to pass", timeout=3)
    cid = one_leg(system, alert(strategy="R2", alert_id="r2", order_type="LIMIT", price=1.0))
    assert system.wait_for_status(cid, ("SENT_TO_BROKER", "FAILED"))["status"] == "SENT_TO_BROKER"
