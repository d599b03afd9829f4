"""Issue 4: faults and recovery, end to end.

The whole service runs in-process (real actors, a real SQLite file under tmp_path) against the real paper
exchange on loopback; faults are switched on through the exchange's control routes or the registry's
`inject_fault` (tests/faults.py's FaultyRegistry). No mocks, no fixed sleeps: every wait is a condition with a
deadline, and "nothing happens later" is checked after the watcher has demonstrably polled the exchange again.

Timing knobs: `request_timeout_s` 0.5 (a hung PlaceOrder is given up quickly), `lost_grace_s` 1.0 with 2
look-ups, and where a test must be deterministic about which REST call meets a fault or where a fill
must be proven to arrive over the WebSocket, `poll_interval_s` is made so long that the watcher never polls
on its own during the test (the only order-book reads are then the ones the product or the test asks for).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import datetime, timedelta, timezone

import pyotp
import pytest
import requests

from actors.store import OrderStore
from messages.broker import IsLoggedIn
from messages.commands import BrokerOrderReport, PositionsSnapshot, RegisterAlert, TransitionOrder
from messages.control import GetLedger
from messages.noren import PlaceOrderRequest
from messages.orders import NewOrder
from messages.store import Sync
from messages.watcher import GetWatcherStatus, LookUp
from runtime.noren.rest import NorenRestClient
from storage.db import close_database, open_database
from storage.models import ExternalOrder, Order
from storage.transitions import is_allowed
from tests.conftest import alert, paper_faults, paper_orders, set_ltp
from tests.faults import FaultyRegistry
from tests.symbols import NIFTY_CE, NIFTY_PE

SYM = NIFTY_CE
PUT = NIFTY_PE
FAST = {"request_timeout_s": 0.5, "lost_grace_s": 1.0, "lost_min_lookups": 2, "poll_interval_s": 0.2}
NO_TICKS = 30.0  # a poll interval longer than any test here: the watcher never polls on its own
WS_AUTHED = "noren ws connected as"
LOGGED_IN = "broker session opened"
FAR_BELOW = 1.0  # option prices on the paper exchange are ~50..500: a BUY LIMIT at 1.0 rests OPEN


# ---- helpers --------------------------------------------------------------------------------------


@pytest.fixture
def paper(paper_factory):
    """The exchange accepts raw MKT here (its default refuses them, like the live broker): manual_order places
    MKT orders, and the service sends MARKET legs as MKT (market protection off in `oms`)."""
    return paper_factory(reject_market_orders=False)


@pytest.fixture
def oms(make_system):
    """make_system with the periodic PositionBook read off unless a test turns it on: fewer background REST
    calls (the fault counters count every call) and no risk_state writes behind the tests' backs.
    Market protection off: its SearchScrip/GetQuotes before each PlaceOrder would meet the faults that these
    tests aim at PlaceOrder (tests/test_market_protection.py covers it). A FaultyRegistry: inject_fault."""

    def make(**kwargs):
        risk = {"pnl_poll_interval_s": NO_TICKS, **kwargs.pop("risk", {})}
        broker = {"market_protection": False, **kwargs.pop("broker", {})}
        return make_system(risk=risk, broker=broker, registry=FaultyRegistry(), **kwargs)

    return make


def one_leg(system, payload) -> str:
    status, body = system.inject_alert(payload)
    assert status == 202, (status, body)
    assert len(body["orders"]) == 1, body
    assert body["orders"][0]["status"] == "CREATED", body
    return body["orders"][0]["command_id"]


def at_paper(exchange, command_id: str) -> list[dict]:
    """Every order the exchange holds (any account) whose remarks are this command_id."""
    return [o for o in paper_orders(exchange) if o.get("remarks") == command_id]


def fault_state(exchange) -> dict:
    reply = requests.get(f"{exchange.base_url}/paper/faults", timeout=5)
    reply.raise_for_status()
    return reply.json()


def chain(order: dict) -> list[str]:
    return [e["to_status"] for e in order["events"]]


def event(order: dict, to_status: str) -> dict:
    found = [e for e in order["events"] if e["to_status"] == to_status]
    assert len(found) == 1, (to_status, order["events"])
    return found[0]


def seconds_between(earlier: dict, later: dict) -> float:
    return (datetime.fromisoformat(later["at"]) - datetime.fromisoformat(earlier["at"])).total_seconds()


def assert_clean_chain(order: dict) -> None:
    """Events link up (each starts where the previous ended), are legal, have no duplicate, end at the status."""
    events = order["events"]
    assert events and events[0]["from_status"] is None, events
    for before, after in zip(events, events[1:]):
        assert after["from_status"] == before["to_status"], events
        assert is_allowed(after["from_status"], after["to_status"]), events
    pairs = [(e["from_status"], e["to_status"]) for e in events]
    assert len(pairs) == len(set(pairs)), f"duplicated event in {pairs}"
    assert events[-1]["to_status"] == order["status"], events


def notes(system, kind: str, command_id: str | None = None) -> list[dict]:
    return [n for n in system.notifications()["recent"]
            if n["kind"] == kind and (command_id is None or n["command_id"] == command_id)]


def watcher_status(system) -> dict:
    return system.registry.ask("watcher", GetWatcherStatus(), timeout=5)


def wait_ws(system, state: str = "connected", timeout: float = 10.0) -> None:
    system.wait_until(lambda: watcher_status(system)["ws"] == state, timeout, f"the WebSocket to be {state}")


def broker_done(system, command_id: str) -> None:
    """Returns once BrokerActor has finished sending this order (whatever the outcome)."""
    system.wait_until(lambda: system.order(command_id)["status"] != "CREATED", 5, f"{command_id} to leave CREATED")
    system.registry.ask("broker", IsLoggedIn(), timeout=10)  # queued behind the send() in progress


def flush_reports(system) -> None:
    """Every report told to the watcher so far has been forwarded and applied by the store."""
    watcher_status(system)
    system.registry.ask("store", Sync(), timeout=5)


def wait_polls(system, count: int, timeout: float = 10.0) -> None:
    """Wait until the watcher has read the OrderBook `count` more times on its own schedule."""
    seen = [watcher_status(system)["last_poll_ok"]]

    def polled():
        now = watcher_status(system)["last_poll_ok"]
        if now != seen[-1]:
            seen.append(now)
        return len(seen) > count

    system.wait_until(polled, timeout, f"{count} more OrderBook polls")


def log_count(system, text: str) -> int:
    """How many records of this System's service log (data_dir/logs/service.jsonl) contain `text`."""
    path = system.data_dir / "logs" / "service.jsonl"
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines()
               if text in json.loads(line).get("message", ""))


def wait_log_count(system, text: str, at_least: int, timeout: float = 10.0) -> int:
    return system.wait_until(lambda: (n := log_count(system, text)) >= at_least and n, timeout,
                             f"{at_least} log records with {text!r}")


def broker_client(exchange, uid: str = "TEST1") -> NorenRestClient:
    """Our own NorenOMS session on the paper exchange, as the service's account (same book)."""
    client = NorenRestClient(exchange.rest_url)
    client.login_quickauth(uid, "any-password", pyotp.random_base32(), "VC", "api-secret", "test-imei")
    return client


def manual_order(exchange, remarks: str = "manual-trade", tsym: str = SYM, qty: int = 65) -> str:
    client = broker_client(exchange)
    try:
        return client.place_order(PlaceOrderRequest(exch="NFO", tsym=tsym, qty=qty, prc=0, prd="M", trantype="B",
                                                    prctyp="MKT", ret="DAY", remarks=remarks))
    finally:
        client.close()


def assert_matches_exchange(order: dict, exchange) -> dict:
    rows = at_paper(exchange, order["command_id"])
    assert len(rows) == 1, rows
    row = rows[0]
    assert order["broker_order_id"] == row["norenordno"]
    assert row["status"] == "COMPLETE"
    assert order["filled_qty"] == int(row["fillshares"]) == order["quantity"]
    assert order["avg_price"] == pytest.approx(float(row["avgprc"]))
    return row


def get_json(system, path: str):
    reply = requests.get(f"{system.url}{path}", headers=system.operator_headers, timeout=5)
    reply.raise_for_status()
    return reply.json()


def ledger(system) -> dict:
    return system.registry.ask("guard", GetLedger(), timeout=5)["positions"]


def wait_ledger(system, positions: dict, timeout: float = 5.0) -> None:
    """The guard hears of fills after the database has them (OrderChanged is told, not asked)."""
    system.wait_until(lambda: ledger(system) == positions, timeout, f"the guard ledger to be {positions}")


# ---- 1. unknown outcome: a hung PlaceOrder --------------------------------------------------------


def test_hung_place_order_stays_sent_is_never_resent_and_is_adopted_by_remarks(oms, paper):
    # No WebSocket and no polling of its own: the only OrderBook read is the look-up the broker asks for
    # after the unknown outcome, so adoption can only come from that look-up (by remarks).
    system = oms(broker={**FAST, "use_websocket": False, "poll_interval_s": NO_TICKS})
    paper_faults(paper, hang_place_orders=1)
    cid = one_leg(system, alert())

    system.wait_until(lambda: fault_state(paper)["held_replies"] == 1, 5, "the exchange to hold the reply")
    held = system.order(cid)
    assert (held["status"], held["broker_order_id"]) == ("SENT_TO_BROKER", None)
    assert len(at_paper(paper, cid)) == 1  # the exchange accepted it; we do not know that yet

    broker_done(system, cid)  # the client has timed out and send() is over
    order = system.wait_for_status(cid, "EXECUTED", timeout=5)
    assert_matches_exchange(order, paper)
    assert chain(order) == ["CREATED", "SENT_TO_BROKER", "EXECUTED"]  # never FAILED on the way
    assert "via poll" in event(order, "EXECUTED")["detail"]
    # It stayed SENT_TO_BROKER without broker id at least until the client gave up.
    assert seconds_between(event(order, "SENT_TO_BROKER"), event(order, "EXECUTED")) >= 0.45
    assert_clean_chain(order)

    for _ in range(3):  # several more OrderBook reads: still one exchange order, nothing changes
        assert system.registry.ask("watcher", LookUp(), timeout=5) is True
        flush_reports(system)
        assert len(at_paper(paper, cid)) == 1
    assert system.order(cid)["events"] == order["events"]
    assert len(notes(system, "filled", cid)) == 1


def test_hung_place_order_with_websocket_and_polling_executes_once_and_next_order_is_normal(oms, paper):
    system = oms(broker=FAST)
    paper_faults(paper, hang_place_orders=1)
    cid = one_leg(system, alert())
    order = system.wait_for_status(cid, "EXECUTED", timeout=5)
    broker_done(system, cid)  # the hung request has been given up
    wait_polls(system, 2)  # idle polls: each one is IDLE_POLL_EVERY poll intervals
    assert len(at_paper(paper, cid)) == 1
    order = system.order(cid)
    assert_matches_exchange(order, paper)
    assert chain(order) == ["CREATED", "SENT_TO_BROKER", "EXECUTED"]
    assert fault_state(paper)["hang_place_orders"] == 0

    # The broker's connection recovered from the abandoned request: the next order is placed normally.
    cid2 = one_leg(system, alert(strategy="S2"))
    order2 = system.wait_for_status(cid2, "EXECUTED", timeout=5)
    assert_matches_exchange(order2, paper)


# ---- 2. LOST_IN_FLIGHT --------------------------------------------------------------------------------


def test_place_order_answered_500_becomes_lost_in_flight_then_is_adopted_by_a_late_report(oms, paper):
    # Deterministic: no WebSocket, no polling of its own, no position polling. Between arming the fault
    # and the PlaceOrder no other REST call can happen, and the proof is checked below anyway.
    system = oms(broker={**FAST, "use_websocket": False, "poll_interval_s": NO_TICKS})
    paper_faults(paper, http_500=1)
    assert fault_state(paper)["http_500"] == 1
    cid = one_leg(system, alert())
    broker_done(system, cid)
    # Proof that the PlaceOrder met the 500: the fault was consumed and the exchange never saw the order.
    assert fault_state(paper)["http_500"] == 0
    assert at_paper(paper, cid) == []
    sent = system.order(cid)
    assert (sent["status"], sent["broker_order_id"], sent["tag"]) == ("SENT_TO_BROKER", None, None)

    def looked_up_until_settled():
        assert system.registry.ask("watcher", LookUp(), timeout=5) is True
        assert at_paper(paper, cid) == [], "the order was resent"
        current = system.order(cid)
        return current if current["status"] != "SENT_TO_BROKER" else None

    lost = system.wait_until(looked_up_until_settled, 5, "LOST_IN_FLIGHT")
    assert (lost["status"], lost["tag"], lost["broker_order_id"]) == ("FAILED", "LOST_IN_FLIGHT", None)
    assert seconds_between(event(lost, "SENT_TO_BROKER"), event(lost, "FAILED")) >= 1.0  # the grace
    system.wait_until(lambda: notes(system, "rejected", cid), 5, "a notification of the lost order")
    assert "LOST_IN_FLIGHT" in notes(system, "rejected", cid)[0]["text"]

    # The broker reports it after all: broker truth wins.
    system.inject("watcher", BrokerOrderReport(remarks=cid, broker_order_id="X1", status="COMPLETE", filled_qty=65,
                                               avg_price=100.0, origin="inject"))
    adopted = system.wait_for_status(cid, "EXECUTED", timeout=5)
    assert (adopted["broker_order_id"], adopted["filled_qty"], adopted["avg_price"]) == ("X1", 65, 100.0)
    assert chain(adopted) == ["CREATED", "SENT_TO_BROKER", "FAILED", "EXECUTED"]
    assert event(adopted, "FAILED")["tag"] == "LOST_IN_FLIGHT"
    assert_clean_chain(adopted)
    wait_ledger(system, {f"S1|NFO|{SYM}|NRML": 65})
    assert at_paper(paper, cid) == []


def test_lost_in_flight_through_the_watchers_own_polling(oms, paper):
    """Same fault with the regular poll schedule. The fault is armed right after an idle poll (the next one
    is IDLE_POLL_EVERY ticks away); which call met the 500 is proven, and the round is repeated if a poll
    took it (the order then reached the exchange and executed normally)."""
    system = oms(broker={**FAST, "use_websocket": False})
    cid = None
    for attempt in range(3):
        wait_polls(system, 1)
        paper_faults(paper, http_500=1)
        candidate = one_leg(system, alert(strategy=f"L{attempt}"))
        broker_done(system, candidate)
        if at_paper(paper, candidate):  # the PlaceOrder was processed: a poll took the 500
            system.wait_for_status(candidate, "EXECUTED", timeout=5)
            continue
        assert fault_state(paper)["http_500"] == 0
        cid = candidate
        break
    assert cid is not None, "a poll met the 500 in every round"
    lost = system.wait_for_status(cid, "FAILED", timeout=5)
    assert lost["tag"] == "LOST_IN_FLIGHT"
    assert seconds_between(event(lost, "SENT_TO_BROKER"), event(lost, "FAILED")) >= 1.0
    wait_polls(system, 1)
    assert at_paper(paper, cid) == []
    assert system.order(cid)["status"] == "FAILED"


# ---- 3. idempotent and out-of-order reports -------------------------------------------------------


def test_repeated_and_out_of_order_reports_never_reduce_fills_or_duplicate_events(oms, paper):
    system = oms(broker=FAST)
    cid = one_leg(system, alert(order_type="LIMIT", price=FAR_BELOW))
    bid = system.wait_until(lambda: system.order(cid)["broker_order_id"], 5, "a broker order id")

    steps = [  # (status, filled, avg, remarks) -> expected (status, filled_qty, avg_price)
        (("OPEN", 30, 1.0, cid), ("PARTIAL", 30, 1.0)),
        (("OPEN", 10, 0.9, cid), ("PARTIAL", 30, 1.0)),  # older
        (("OPEN", 30, 1.0, cid), ("PARTIAL", 30, 1.0)),  # the same again
        (("OPEN", 30, 1.0, None), ("PARTIAL", 30, 1.0)),  # the same, matched by broker id only
        (("COMPLETE", 65, 1.0, cid), ("EXECUTED", 65, 1.0)),
        (("OPEN", 30, 1.0, cid), ("EXECUTED", 65, 1.0)),  # stale, after the end
    ]
    previous = 0
    for (status, filled, avg, remarks), expected in steps:
        system.inject("watcher", BrokerOrderReport(remarks=remarks, broker_order_id=bid, status=status,
                                                   filled_qty=filled, avg_price=avg, origin="inject"))
        flush_reports(system)
        order = system.order(cid)
        assert (order["status"], order["filled_qty"], order["avg_price"]) == expected, (status, filled)
        assert order["filled_qty"] >= previous
        previous = order["filled_qty"]

    order = system.order(cid)
    assert chain(order) == ["CREATED", "SENT_TO_BROKER", "PARTIAL", "EXECUTED"]
    assert_clean_chain(order)
    assert len(notes(system, "partial", cid)) == 1
    assert len(notes(system, "filled", cid)) == 1
    assert ledger(system) == {f"S1|NFO|{SYM}|NRML": 65}  # the fills were counted once


# ---- 4. session expiry ------------------------------------------------------------------------------


def test_session_expiry_mid_run_relogs_and_reauthenticates_the_websocket(oms, paper):
    # No polling of its own: a fill can only reach us over the (re-authenticated) WebSocket or the
    # re-read that follows each (re)connection.
    system = oms(broker={**FAST, "poll_interval_s": NO_TICKS})
    wait_ws(system)
    assert wait_log_count(system, WS_AUTHED, 1) == 1
    logins = wait_log_count(system, LOGGED_IN, 1)
    paper_faults(paper, expire_sessions=True)

    cid = one_leg(system, alert())
    order = system.wait_for_status(cid, "EXECUTED", timeout=10)
    assert_matches_exchange(order, paper)  # placed once, with a session opened after the expiry
    wait_log_count(system, LOGGED_IN, logins + 1)  # the broker logged in again
    assert system.registry.ask("broker", IsLoggedIn(), timeout=5) is True

    wait_log_count(system, WS_AUTHED, 2)  # the socket authenticated again, with the new session
    wait_ws(system)
    cid2 = one_leg(system, alert(strategy="S2"))
    order2 = system.wait_for_status(cid2, "EXECUTED", timeout=5)
    assert_matches_exchange(order2, paper)
    assert "via ws" in event(order2, "EXECUTED")["detail"]  # pushed over the re-authenticated socket
    assert watcher_status(system)["ws"] == "connected"


# ---- 5. WebSocket drop --------------------------------------------------------------------------------


def test_dropped_websocket_reconnects_and_orders_still_execute(oms, paper):
    system = oms(broker={**FAST, "poll_interval_s": NO_TICKS})
    wait_ws(system)
    assert wait_log_count(system, WS_AUTHED, 1) == 1
    paper_faults(paper, drop_websockets=True)
    cid = one_leg(system, alert())
    order = system.wait_for_status(cid, "EXECUTED", timeout=10)  # only a reconnection can tell us
    assert_matches_exchange(order, paper)

    wait_log_count(system, WS_AUTHED, 2)
    wait_ws(system)
    cid2 = one_leg(system, alert(strategy="S2"))
    order2 = system.wait_for_status(cid2, "EXECUTED", timeout=5)
    assert "via ws" in event(order2, "EXECUTED")["detail"]  # the reconnected socket delivers pushes
    assert_matches_exchange(order2, paper)


def test_without_websocket_orders_execute_by_polling_alone(oms, paper):
    system = oms(broker={**FAST, "use_websocket": False})
    cid = one_leg(system, alert())
    order = system.wait_for_status(cid, "EXECUTED", timeout=5)
    assert_matches_exchange(order, paper)
    assert "via poll" in event(order, "EXECUTED")["detail"]
    assert watcher_status(system)["ws"] == "disconnected"


# ---- 6. external orders ------------------------------------------------------------------------------


def test_external_order_is_recorded_and_notified_but_never_adopted(oms, paper):
    system = oms(broker=FAST)
    wait_ws(system)
    oid = manual_order(paper)

    row = system.wait_until(
        lambda: (r := ExternalOrder.get_or_none(ExternalOrder.broker_order_id == oid)) and r.status == "COMPLETE"
        and r, 5, "the external order to be recorded as COMPLETE")
    assert (row.remarks, row.exchange, row.symbol, row.side, row.quantity, row.filled_qty) == \
        ("manual-trade", "NFO", SYM, "BUY", 65, 65)
    system.wait_until(lambda: notes(system, "external"), 5, "an external-order notification")
    # A reconnection re-reads the whole OrderBook: the same order is seen again, and is not news.
    paper_faults(paper, drop_websockets=True)
    wait_log_count(system, WS_AUTHED, 2)
    wait_ws(system)
    flush_reports(system)
    assert len(notes(system, "external")) == 1
    assert oid in notes(system, "external")[0]["text"]
    assert system.orders() == []
    assert Order.select().where(Order.broker_order_id == oid).count() == 0
    assert get_json(system, "/positions") == []
    assert ledger(system) == {}


# ---- 7. restart recovery --------------------------------------------------------------------------


def _leg(command_id: str, alert_id: str, strategy: str, symbol: str = SYM) -> NewOrder:
    return NewOrder(command_id=command_id, alert_id=alert_id, client_id="paper", source="webhook",
                    strategy_name=strategy, execution_type="ENTRY", exchange="NFO", symbol=symbol, side="BUY",
                    quantity=65, product="NRML", order_type="MARKET")


def test_restart_expires_old_created_orders_and_sends_fresh_ones_through_the_blockers(oms, paper, tmp_path):
    data_dir = tmp_path / "restart"
    oms(data_dir=data_dir, broker=FAST).stop()  # a prior run left its database behind

    db = open_database(data_dir / "orders.db")
    try:
        store = OrderStore(db)
        for alert_id, cid, strategy in (("old-1", "omsold000000000001", "OLD"),
                                        ("fresh-1", "omsfresh0000000001", "FRESH"),
                                        ("fresh-2", "omsfresh0000000002", "FRESH")):
            result, _ = store.register_alert(RegisterAlert(alert_id=alert_id, source="webhook", strategy_name=strategy,
                                                           legs=(_leg(cid, alert_id, strategy),)))
            assert result.http_status == 202
        an_hour_ago = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat(timespec="microseconds")
        Order.update(created_at=an_hour_ago, updated_at=an_hour_ago).where(
            Order.command_id == "omsold000000000001").execute()
    finally:
        close_database(db)

    system = oms(data_dir=data_dir, broker=FAST, service={"max_signal_age_s": 30})
    old = system.order("omsold000000000001")  # settled before the listener accepted anything
    assert (old["status"], old["tag"]) == ("FAILED", "EXPIRED_ON_RESTART")
    assert chain(old) == ["CREATED", "FAILED"]

    fresh = system.wait_for_status("omsfresh0000000001", "EXECUTED", timeout=5)
    assert_matches_exchange(fresh, paper)
    # The second fresh ENTRY of the same strategy meets the blockers like any live alert.
    second = system.wait_for_status("omsfresh0000000002", "FAILED", timeout=5)
    assert second["tag"] in ("DUPLICATE_BLOCKED:OPEN_ORDER_EXISTS", "GUARD_BLOCKED:STRATEGY_HAS_POSITION")
    wait_polls(system, 1)
    assert at_paper(paper, "omsold000000000001") == []
    assert at_paper(paper, "omsfresh0000000002") == []
    assert system.order("omsold000000000001")["status"] == "FAILED"


def test_fill_that_happened_while_the_service_was_down_is_applied_at_restart(oms, paper, tmp_path):
    data_dir = tmp_path / "down"
    first = oms(data_dir=data_dir, broker=FAST)
    cid = one_leg(first, alert(order_type="LIMIT", price=FAR_BELOW))
    first.wait_until(lambda: first.order(cid)["broker_order_id"], 5, "a broker order id")
    first.stop()

    set_ltp(paper, "NFO", SYM, 0.95)  # crosses the resting BUY LIMIT at 1.0: it fills at the exchange
    first.wait_until(lambda: [o for o in at_paper(paper, cid) if o["status"] == "COMPLETE"], 5,
                     "the fill at the exchange")

    second = oms(data_dir=data_dir, broker=FAST)
    order = second.order(cid)  # start-up recovery reconciled it before the listener opened
    assert order["status"] == "EXECUTED", order
    assert_matches_exchange(order, paper)
    assert chain(order) == ["CREATED", "SENT_TO_BROKER", "EXECUTED"]
    wait_ledger(second, {f"S1|NFO|{SYM}|NRML": 65})


def test_unknown_outcome_orders_left_by_a_crash_are_resolved_at_restart(oms, paper, tmp_path):
    """A process that died inside PlaceOrder leaves SENT_TO_BROKER rows without broker id. At restart the one
    that reached the exchange is adopted by remarks before the listener opens; the other is never sent and
    becomes LOST_IN_FLIGHT after the grace."""
    data_dir = tmp_path / "crashed"
    oms(data_dir=data_dir, broker=FAST).stop()
    reached, never = "omsreached000000001", "omsnever00000000001"
    db = open_database(data_dir / "orders.db")
    try:
        store = OrderStore(db)
        for cid, strategy in ((reached, "R1"), (never, "R2")):
            store.register_alert(RegisterAlert(alert_id=f"crash-{strategy}", source="webhook", strategy_name=strategy,
                                               legs=(_leg(cid, f"crash-{strategy}", strategy),)))
            result, _ = store.transition(TransitionOrder(command_id=cid, to_status="SENT_TO_BROKER",
                                                         expect_from=("CREATED",), detail="sending PlaceOrder"))
            assert result.applied
    finally:
        close_database(db)
    oid = manual_order(paper, remarks=reached)  # that PlaceOrder reached the exchange; its reply died with us

    system = oms(data_dir=data_dir, broker=FAST)
    order = system.order(reached)  # reconciled during start-up
    assert (order["status"], order["broker_order_id"]) == ("EXECUTED", oid), order
    assert_matches_exchange(order, paper)
    lost = system.wait_for_status(never, "FAILED", timeout=5)
    assert lost["tag"] == "LOST_IN_FLIGHT"
    wait_polls(system, 1)
    assert at_paper(paper, never) == []
    assert len(at_paper(paper, reached)) == 1
    wait_ledger(system, {f"R1|NFO|{SYM}|NRML": 65})


# ---- 8. ledger mismatch ---------------------------------------------------------------------------


def broker_positions(exchange) -> PositionsSnapshot:
    """The account's PositionBook as the watcher hands it to the guard."""
    client = broker_client(exchange)
    try:
        return PositionsSnapshot(rows=tuple(r.model_dump() for r in client.position_book()), ok=True)
    finally:
        client.close()


def net_at_broker(snapshot: PositionsSnapshot, tsym: str) -> int:
    return sum(int(r["netqty"]) for r in snapshot.rows if r["tsym"] == tsym)


def test_unknown_broker_position_is_reported_and_the_ledger_is_not_changed(oms, paper):
    # The PositionBook reads are handed to the guard by the test (real reads of the exchange, exactly what
    # the watcher sends), so that "seen once" and "seen twice" are exact; the next test uses the watcher.
    system = oms(broker=FAST)
    c1 = one_leg(system, alert(strategy="S1"))
    c2 = one_leg(system, alert(strategy="S2", tradingsymbol=PUT))
    system.wait_for_status(c1, "EXECUTED", timeout=5)
    system.wait_for_status(c2, "EXECUTED", timeout=5)
    before = {f"S1|NFO|{SYM}|NRML": 65, f"S2|NFO|{PUT}|NRML": 65}
    system.wait_until(lambda: ledger(system) == before, 5, "the ledger to hold both strategies")

    def show_guard(snapshot):
        system.inject("guard", snapshot)
        ledger(system)  # the guard has handled it
        system.notifications()  # and the notifier has queued what it was told

    agreeing = broker_positions(paper)
    show_guard(agreeing)
    show_guard(agreeing)
    assert notes(system, "ledger") == []  # the broker agrees with our strategies

    manual_order(paper)  # +65 of the call the strategies know nothing about: broker 130, ours 65
    snapshot = system.wait_until(lambda: (s := broker_positions(paper)) and net_at_broker(s, SYM) == 130 and s, 5,
                                 "the manual fill in the PositionBook")
    show_guard(snapshot)
    assert notes(system, "ledger") == []  # one sighting may be a fill in transit: not reported yet
    show_guard(snapshot)
    reported = system.wait_until(lambda: notes(system, "ledger"), 5, "a ledger mismatch notification")
    assert len(reported) == 1 and SYM in reported[0]["text"] and "ours 65, broker 130" in reported[0]["text"]
    assert ledger(system) == before  # nothing was taken from the broker's account-wide numbers
    show_guard(snapshot)
    assert len(notes(system, "ledger")) == 1  # the same mismatch is reported once

    # Exits still resolve against our ledger, not the account: S1 sells its 65, not 130.
    cx = one_leg(system, alert(strategy="S1", execution_type="EXIT", direction="SELL", qty=200))
    exit_order = system.wait_for_status(cx, "EXECUTED", timeout=5)
    assert (exit_order["side"], exit_order["quantity"]) == ("SELL", 65)
    system.wait_until(lambda: ledger(system) == {f"S2|NFO|{PUT}|NRML": 65}, 5, "S1 flat, S2 intact")


def test_unknown_broker_position_is_reported_through_the_watchers_position_polling(oms, paper):
    system = oms(broker=FAST, risk={"pnl_poll_interval_s": 0.2})
    cid = one_leg(system, alert(strategy="S1"))
    system.wait_for_status(cid, "EXECUTED", timeout=5)
    wait_ledger(system, {f"S1|NFO|{SYM}|NRML": 65})
    manual_order(paper, tsym=PUT)  # a position in a symbol no strategy trades
    note = system.wait_until(lambda: [n for n in notes(system, "ledger") if PUT in n["text"]], 10,
                             "a ledger mismatch notification")[0]
    assert "ours 0, broker 65" in note["text"]
    assert ledger(system) == {f"S1|NFO|{SYM}|NRML": 65}
    assert not [n for n in notes(system, "ledger") if SYM in n["text"]]  # S1 agrees with the broker


# ---- 9. supervision -------------------------------------------------------------------------------


def test_guard_dies_on_risk_cleared_is_restarted_and_the_order_still_executes(oms, paper):
    system = oms(broker=FAST)
    restarts = system.supervisor.restarts
    system.registry.inject_fault("guard", "RiskCleared", 1)
    cid = one_leg(system, alert())
    order = system.wait_for_status(cid, "EXECUTED", timeout=5)
    assert system.supervisor.restarts == restarts + 1
    system.wait_until(lambda: [n for n in notes(system, "supervisor") if "guard" in n["text"]], 5,
                      "a supervisor notification about the guard")
    assert_matches_exchange(order, paper)
    wait_ledger(system, {f"S1|NFO|{SYM}|NRML": 65})  # the restarted guard's ledger


def test_send_order_that_kills_the_broker_twice_fails_internal_error_and_is_never_sent(oms, paper):
    system = oms(broker=FAST)
    restarts = system.supervisor.restarts
    system.registry.inject_fault("broker", "SendLegs", 2)
    cid = one_leg(system, alert())
    failed = system.wait_for_status(cid, "FAILED", timeout=10)
    assert failed["tag"] == "INTERNAL_ERROR:BROKER"
    assert chain(failed) == ["CREATED", "FAILED"]
    system.wait_until(lambda: system.supervisor.restarts == restarts + 2, 5, "two broker restarts")

    cid2 = one_leg(system, alert())  # same strategy and symbol: nothing left in flight from the first
    order2 = system.wait_for_status(cid2, "EXECUTED", timeout=5)
    assert_matches_exchange(order2, paper)
    wait_polls(system, 1)
    assert at_paper(paper, cid) == []


def test_risk_cleared_that_kills_the_guard_twice_fails_internal_error_and_is_never_sent(oms, paper):
    system = oms(broker=FAST)
    system.registry.inject_fault("guard", "RiskCleared", 2)
    cid = one_leg(system, alert())
    failed = system.wait_for_status(cid, "FAILED", timeout=10)
    assert failed["tag"] == "INTERNAL_ERROR:GUARD"
    assert chain(failed) == ["CREATED", "FAILED"]
    cid2 = one_leg(system, alert())
    system.wait_for_status(cid2, "EXECUTED", timeout=10)
    assert at_paper(paper, cid) == []


def test_store_dies_on_a_broker_report_and_the_report_is_redelivered(oms, paper):
    system = oms(broker=FAST)
    restarts = system.supervisor.restarts
    system.registry.inject_fault("store", "BrokerOrderReport", 1)
    cid = one_leg(system, alert())
    order = system.wait_for_status(cid, "EXECUTED", timeout=10)
    assert system.supervisor.restarts == restarts + 1
    wait_polls(system, 2)
    flush_reports(system)
    order = system.order(cid)
    assert_matches_exchange(order, paper)
    assert chain(order) == ["CREATED", "SENT_TO_BROKER", "EXECUTED"]
    assert_clean_chain(order)
    assert len(notes(system, "filled", cid)) == 1


def test_after_a_broker_restart_polling_survives_a_session_expiry(oms, paper):
    """The watcher reads the books through a fork of the broker's client. After the broker actor has been
    restarted and the session expires, polling (the only source of fills without the WebSocket) must
    recover with the broker's new login. (Regression: the watcher used to keep a reader forked from the dead
    broker's client, whose credentials no re-login ever refreshed.)"""
    system = oms(broker={**FAST, "use_websocket": False})
    system.registry.inject_fault("broker", "SendLegs", 1)
    cid = one_leg(system, alert())
    system.wait_for_status(cid, "EXECUTED", timeout=10)  # re-delivered once to the restarted broker
    assert system.supervisor.restarts >= 1

    paper_faults(paper, expire_sessions=True)
    cid2 = one_leg(system, alert(strategy="S2"))
    order2 = system.wait_for_status(cid2, "EXECUTED", timeout=5)
    assert_matches_exchange(order2, paper)


# ---- a second writer on the database --------------------------------------------------------------


@pytest.mark.parametrize("write", ["register_alert", "claim_sent_to_broker"])
def test_store_write_is_not_refused_because_another_connection_committed_meanwhile(tmp_path, write):
    """RiskActor writes risk_state on its own connection (on every PositionBook read). A store transaction
    that read first and then met that commit used to fail at once with 'database is locked'
    (SQLITE_BUSY_SNAPSHOT): the alert got a 503, or the send claim failed. The other commit is made to land
    exactly between the store's read and its write."""
    path = tmp_path / "orders.db"
    db = open_database(path)
    other = sqlite3.connect(path, timeout=5, isolation_level=None, check_same_thread=False)
    try:
        store = OrderStore(db)
        cid = "omscontention000001"
        if write == "claim_sent_to_broker":
            store.register_alert(RegisterAlert(alert_id="a1", source="webhook", legs=(_leg(cid, "a1", "S1"),)))
        marker = 'INSERT INTO "ORDERS"' if write == "register_alert" else 'UPDATE "ORDERS"'
        writers: list[threading.Thread] = []

        def risk_saves_its_state():  # what RiskActor._persist does, on its own connection and thread
            other.execute("INSERT OR REPLACE INTO risk_state (client_id, key, value, updated_at) "
                          "VALUES ('paper', 'day', '{}', 'now')")

        def between_read_and_write(sql: str) -> None:
            if sql.lstrip().upper().startswith(marker) and not writers:
                writers.append(threading.Thread(target=risk_saves_its_state))
                writers[0].start()
                writers[0].join(0.5)  # commits at once unless the store already holds the write lock

        db.connection().set_trace_callback(between_read_and_write)
        if write == "register_alert":
            result, _ = store.register_alert(RegisterAlert(alert_id="a1", source="webhook",
                                                           legs=(_leg(cid, "a1", "S1"),)))
            assert result.http_status == 202
        else:
            result, _ = store.transition(TransitionOrder(command_id=cid, to_status="SENT_TO_BROKER",
                                                         expect_from=("CREATED",)))
            assert result.applied
        db.connection().set_trace_callback(None)
        assert writers, "the concurrent write was not exercised"
        writers[0].join(5)
        assert Order.get(Order.command_id == cid).status == ("CREATED" if write == "register_alert"
                                                             else "SENT_TO_BROKER")
    finally:
        other.close()
        close_database(db)


def test_a_restarted_watcher_knows_the_websocket_is_up_and_still_applies_fills(oms, paper):
    """A watcher restarted by the supervisor asks the broker whether the socket is connected (the `ws:connected`
    event went to its dead predecessor); without that it would read the whole OrderBook on every tick."""
    system = oms()
    system.wait_until(lambda: system.registry.ask("watcher", GetWatcherStatus())["ws"] == "connected", what="ws up")
    system.registry.inject_fault("watcher", "BrokerOrderReport", 1)
    cid = one_leg(system, alert())
    system.wait_for_status(cid, "EXECUTED", timeout=10)  # the report is retried by the restarted watcher
    assert system.supervisor.restarts >= 1
    assert system.registry.ask("watcher", GetWatcherStatus())["ws"] == "connected"
