"""The paper exchange remembers: orders, positions, cash and the order-number sequence survive a restart
(clean stop, and kill -9 of an `oms paper` process), order numbers never repeat, days roll over."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from NorenRestApiPy.NorenApi import NorenApi

from runtime.config import PaperConfig
from runtime.paper import PaperExchange, PaperStateError
from runtime.paper.engine import Engine
from runtime.paper.state import load_state, save_state
from tests.symbols import NIFTY_CE, NIFTY_PE

DAY = 86400.0


def engine(**overrides) -> Engine:
    return Engine(PaperConfig(**{"fill_delay_ms": 0, "walk_volatility": 0.0, **overrides}))


def order_fields(**overrides) -> dict:
    fields = {"uid": "U1", "actid": "U1", "trantype": "B", "prd": "M", "exch": "NFO", "tsym": NIFTY_CE,
              "qty": "65", "dscqty": "0", "prctyp": "LMT", "prc": "500", "trgprc": "None", "ret": "DAY",
              "remarks": "r", "amo": "NO"}
    fields.update(overrides)
    return fields


def wait_until(condition, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# ---------------------------------------------------------------- the engine's snapshot, reservation and days


def test_snapshot_restores_orders_positions_cash_and_prices():
    now = time.time()
    first = engine(cash=123456.0)
    first.set_ltp("NFO", NIFTY_CE, 100.0, now)
    filled, _ = first.place("U1", order_fields(), now)
    resting, _ = first.place("U1", order_fields(prc="50", remarks="rest"), now)
    assert (filled.status, resting.status) == ("COMPLETE", "OPEN")
    state = json.loads(json.dumps(first.snapshot()))  # what the file holds

    second = engine()
    second.restore(state, now + 1)
    assert second.order_book("U1") == first.order_book("U1")
    assert second.position_book("U1") == first.position_book("U1")
    assert second.trade_book("U1") == first.trade_book("U1")
    assert second.limits("U1")["cash"] == "123456.00"
    assert second.instrument("NFO", NIFTY_CE).token == first.instrument("NFO", NIFTY_CE).token
    # The resting order still matches after the restart.
    reports = second.set_ltp("NFO", NIFTY_CE, 49.0, now + 2)
    assert [r["status"] for r in reports if r["norenordno"] == resting.norenordno][-1] == "COMPLETE"


def test_a_crash_after_a_save_never_repeats_an_order_number():
    now = time.time()
    saved: list[dict] = []
    crashed = engine()

    def reserve() -> None:  # what the server does: write, then commit the reservation
        snapshot = crashed.snapshot()
        saved.append(json.loads(json.dumps(snapshot)))
        crashed.commit(snapshot)

    crashed.reserve = reserve
    used = {crashed.place("U1", order_fields(), now)[0].norenordno}
    assert len(saved) == 1  # the first number needed a reservation on disk before it was used
    used |= {crashed.place("U1", order_fields(), now)[0].norenordno for _ in range(20)}
    assert len(saved) == 1  # the rest came from the reserved block: no write on the order path
    # Crash: everything after the last save is lost; the restart resumes after the saved reservation.
    restarted = engine()
    restarted.restore(saved[-1], now + 1)
    fresh = {restarted.place("U1", order_fields(), now + 1)[0].norenordno for _ in range(5)}
    assert not fresh & used
    assert min(int(n[6:]) for n in fresh) > max(int(n[6:]) for n in used)


def test_an_order_is_refused_when_its_number_cannot_be_reserved():
    now = time.time()
    broken = engine()

    def reserve() -> None:
        raise OSError(28, "No space left on device")

    broken.reserve = reserve
    with pytest.raises(OSError):
        broken.place("U1", order_fields(), now)
    assert broken.order_book("U1") == [] and broken.all_orders() == []


def test_a_new_day_cancels_open_orders_empties_the_books_and_carries_positions():
    now = time.time()
    exchange = engine()
    exchange.roll(now)
    exchange.set_ltp("NFO", NIFTY_CE, 100.0, now)
    bought, _ = exchange.place("U1", order_fields(qty="130"), now)
    exchange.place("U1", order_fields(trantype="S", qty="65", prc="50"), now)  # sells 65 at 100: +0 rpnl
    resting, _ = exchange.place("U1", order_fields(tsym=NIFTY_PE, prc="1"), now)
    assert resting.status == "OPEN"
    assert exchange.roll(now + 1) == []  # same day: nothing happens

    reports = exchange.roll(now + DAY)
    assert [(r["norenordno"], r["status"]) for r in reports] == [(resting.norenordno, "CANCELED")]
    assert exchange.order_book("U1") == [] and exchange.trade_book("U1") == []
    (row,) = exchange.position_book("U1")
    assert (row["tsym"], row["netqty"], row["cfbuyqty"], row["cfsellqty"]) == (NIFTY_CE, "65", "65", "0")
    assert (row["daybuyqty"], row["daysellqty"], row["rpnl"]) == ("0", "0", "0.00")
    later, _ = exchange.place("U1", order_fields(), now + DAY)
    assert later.norenordno != bought.norenordno and int(later.norenordno[6:]) > int(resting.norenordno[6:])
    # Closing the carried position the next day realises PnL against its carried average.
    exchange.set_ltp("NFO", NIFTY_CE, 110.0, now + DAY)
    exchange.place("U1", order_fields(trantype="S", qty="130", prc="105"), now + DAY)
    (row,) = exchange.position_book("U1")
    assert row["netqty"] == "0" and float(row["rpnl"]) == pytest.approx(130 * 10)  # 65 carried + 65 bought at 100


# ---------------------------------------------------------------- the state file


def test_the_state_file_is_written_atomically_and_a_corrupt_one_refuses_to_start(tmp_path):
    path = tmp_path / "state.json"
    save_state(path, {"a": 1})
    assert load_state(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp file left behind
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(PaperStateError, match="not valid JSON"):
        PaperExchange(PaperConfig(port=0, state_file=str(path))).start()
    path.write_text('{"format": 1}', encoding="utf-8")
    with pytest.raises(PaperStateError, match="malformed"):
        PaperExchange(PaperConfig(port=0, state_file=str(path))).start()


def test_persist_false_writes_nothing(tmp_path):
    path = tmp_path / "state.json"
    with PaperExchange(PaperConfig(port=0, state_file=str(path), persist=False)) as exchange:
        assert exchange.state_path is None
        place(exchange, "U1")
    assert not path.exists()


def login(exchange_url: str, uid: str) -> NorenApi:
    api = NorenApi(host=exchange_url + "/NorenWClientTP/", websocket=exchange_url.replace("http", "ws") + "/NorenWSTP/")
    reply = api.login(userid=uid, password="pw", twoFA="123456", vendor_code="VC", api_secret="s", imei="t")
    assert reply is not None and reply["stat"] == "Ok"
    return api


def place(exchange: PaperExchange, uid: str, **kwargs) -> str:
    return place_at(exchange.base_url, uid, **kwargs)


def place_at(base_url: str, uid: str, qty: int = 65, price: float = 500.0) -> str:
    api = login(base_url, uid)
    reply = api.place_order(buy_or_sell="B", product_type="M", exchange="NFO", tradingsymbol=NIFTY_CE,
                            quantity=qty, discloseqty=0, price_type="LMT", price=price, remarks="keep")
    assert reply is not None and reply["stat"] == "Ok", reply
    return reply["norenordno"]


def test_a_restarted_exchange_keeps_its_books_and_numbering(tmp_path):
    config = PaperConfig(port=0, fill_delay_ms=0, walk_volatility=0.0, state_file=str(tmp_path / "paper.json"))
    with PaperExchange(config) as exchange:
        exchange.set_ltp("NFO", NIFTY_CE, 100.0)
        filled = place(exchange, "U1")
        resting = place(exchange, "U1", price=10.0)
        api = login(exchange.base_url, "U1")
        wait_until(lambda: any(r["norenordno"] == filled and r["status"] == "COMPLETE"
                               for r in api.get_order_book() or []), what="fill")
        before = (api.get_order_book(), api.get_positions())
    with PaperExchange(config) as exchange:
        api = login(exchange.base_url, "U1")
        book, positions = api.get_order_book(), api.get_positions()
        assert [(r["norenordno"], r["status"]) for r in book] == [(r["norenordno"], r["status"]) for r in before[0]]
        assert [(p["tsym"], p["netqty"], p["netavgprc"]) for p in positions] == \
               [(p["tsym"], p["netqty"], p["netavgprc"]) for p in before[1]]
        again = place(exchange, "U1")
        assert again not in (filled, resting) and int(again[6:]) > int(resting[6:])
        # The resting order survived and still matches.
        exchange.set_ltp("NFO", NIFTY_CE, 9.0)
        wait_until(lambda: any(r["norenordno"] == resting and r["status"] == "COMPLETE"
                               for r in api.get_order_book() or []), what="resting order filled after restart")


def start_oms_paper(config: Path, cwd: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "paper", "--config", str(config), "--port", "0"],
                            cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    lines = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if found:
            return proc, f"http://127.0.0.1:{found.group(1)}"
    proc.kill()
    raise AssertionError("oms paper did not start:\n" + "".join(lines))


def test_kill_9_of_oms_paper_never_repeats_an_order_number(tmp_path):
    state = tmp_path / "paper_state.json"
    config = tmp_path / "config.toml"
    config.write_text(f'[paper]\nstate_file = {json.dumps(str(state))}\nwalk_volatility = 0.0\n', encoding="utf-8")
    proc, url = start_oms_paper(config, tmp_path)
    try:
        first = place_at(url, "U1", price=10.0)
        wait_until(lambda: first in state.read_text(encoding="utf-8"), what="the first order saved")
        second = place_at(url, "U1", price=10.0)  # perhaps not saved yet when the process dies
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        proc.stderr.close()
    proc, url = start_oms_paper(config, tmp_path)
    try:
        api = login(url, "U1")
        numbers = [row["norenordno"] for row in api.get_order_book() or []]
        assert first in numbers
        fresh = {place_at(url, "U1", price=10.0) for _ in range(3)}
        assert not fresh & {first, second}
        assert min(int(n[6:]) for n in fresh) > int(second[6:])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        proc.stderr.close()
    assert proc.returncode == 0
    saved = load_state(state)
    assert {o["norenordno"] for o in saved["accounts"]["U1"]["orders"]} >= fresh | {first}


def test_oms_paper_defaults_to_paper_state_json_in_the_current_directory(tmp_path):
    (tmp_path / "config.toml").write_text("[paper]\nwalk_volatility = 0.0\n", encoding="utf-8")
    proc, url = start_oms_paper(tmp_path / "config.toml", tmp_path)
    try:
        number = place_at(url, "U1", price=10.0)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        proc.stderr.close()
    assert number in (tmp_path / "paper_state.json").read_text(encoding="utf-8")
