"""Issue 10.6, no order stays in limbo: an accepted order the broker no longer knows ends FAILED BROKER_UNKNOWN_ORDER.

The plain parts (UnknownOrders, the emsg classification, the paper's test-only forget) are tested directly; the
rest runs the whole service against the real paper exchange, which is told to forget an order
(`POST /paper/forget`) the way a broker can lose one.
"""

from __future__ import annotations

import requests

from actors.notifier import describe_change
from actors.watcher import UnknownOrders
from conftest import SECRET, alert, paper_faults, set_ltp
from messages.commands import BrokerOrderNotFound, BrokerOrderReport, CancelOrder
from messages.orders import OrderChanged, OrderSnapshot
from messages.watcher import GetWatcherStatus
from runtime.config import PaperConfig
from runtime.noren.errors import (
    BrokerRejected,
    LoginFailed,
    SessionExpired,
    UnknownOutcome,
    error_from_emsg,
    says_order_unknown,
)
from runtime.paper.engine import NOT_FOUND, NOT_FOUND_CANCEL, Engine, OrderError
from storage import transitions as T
from symbols import NIFTY_CE

TERMINAL = ("EXECUTED", "FAILED")


# ---- plain logic ----------------------------------------------------------------------------------

def test_only_the_brokers_own_not_found_answer_says_unknown():
    assert says_order_unknown(error_from_emsg(NOT_FOUND_CANCEL, "CancelOrder"))
    assert says_order_unknown(error_from_emsg(NOT_FOUND, "ModifyOrder"))
    assert says_order_unknown(error_from_emsg('Error Occurred : 5 "no data"', "SingleOrdHist"))
    # Failures prove nothing: transport, 5xx, session, other refusals, a refused login.
    assert not says_order_unknown(UnknownOutcome("OrderBook: HTTP 500", route="OrderBook"))
    assert not says_order_unknown(error_from_emsg("Session Expired : Invalid Session Key", "CancelOrder"))
    assert not says_order_unknown(SessionExpired("CancelOrder: HTTP 403", route="CancelOrder"))
    assert not says_order_unknown(error_from_emsg("Invalid Input : norenordno is Missing", "CancelOrder"))
    assert not says_order_unknown(BrokerRejected("CancelOrder: HTTP 404", route="CancelOrder"))
    assert not says_order_unknown(LoginFailed("x", emsg="Order not found"))


def test_unknown_orders_need_two_spaced_reads_that_began_after_the_suspicion():
    u = UnknownOrders(spacing_s=2.0)
    assert u.suspect("c1", "B1", now=10.0, why="CancelOrder")
    assert not u.suspect("c1", "B1", now=11.0, why="again")  # the count goes on
    assert u.wants_read(10.0)
    u.book_read(9.0, set(), set())  # began before the suspicion: does not count
    assert u.suspects["c1"].absent_at == []
    u.book_read(10.5, set(), set())
    assert not u.wants_read(11.0) and u.due_history() == []
    u.book_read(11.5, set(), set())  # too soon after the first: does not count
    assert u.suspects["c1"].absent_at == [10.5] and u.due_history() == []
    assert u.wants_read(12.5)
    u.book_read(12.5, set(), set())
    assert u.due_history() == ["c1"] and not u.wants_read(20.0)
    assert u.history("c1", listed=False) is True
    assert u.suspects == {}


def test_unknown_orders_every_suspicion_ends():
    u = UnknownOrders(spacing_s=1.0)
    for cid, bid in (("a", "A"), ("b", "B"), ("c", "C"), ("d", "D")):
        u.suspect(cid, bid, now=0.0, why="t")
    # seen again in a book read, by broker id or by remarks: dropped
    assert sorted(u.book_read(1.0, {"A"}, {"b"})) == ["a", "b"]
    # no longer open (a report settled it), or another broker id: dropped
    assert u.keep_only({"c": "C", "d": "OTHER"}) == ["d"]
    u.book_read(2.0, set(), set())
    assert u.due_history() == ["c"]
    assert u.history("c", listed=True) is False  # SingleOrdHist lists it: known after all
    assert u.suspects == {} and not u.wants_read(100.0)


def test_a_failed_order_that_shows_up_again_follows_the_broker():
    failed = T.OrderState(T.FAILED, 65, 101.0, "B1", "BROKER_UNKNOWN_ORDER")
    done = T.plan_broker_update(failed, T.BrokerView("COMPLETE", 130, 101.5, "B1"))
    assert (done.to_status, done.filled_qty) == (T.EXECUTED, 130)
    assert T.plan_broker_update(failed, T.BrokerView("OPEN", 65, 101.0, "B1")) is None  # no news: stays FAILED


def test_paper_forget_removes_an_order_from_the_books_only():
    engine = Engine(PaperConfig(fill_delay_ms=0))
    engine.set_ltp("NFO", NIFTY_CE, 100.0, 0.0)
    order, _ = engine.place("U1", {"exch": "NFO", "tsym": NIFTY_CE, "qty": "65", "prc": "1", "prd": "M",
                                   "trantype": "B", "prctyp": "LMT", "ret": "DAY", "remarks": "cid"}, 0.0)
    assert engine.order_book("U1")[0]["norenordno"] == order.norenordno
    assert engine.forget(order.norenordno) and not engine.forget(order.norenordno)
    assert engine.order_book("U1") == [] and engine.order_history("U1", order.norenordno) is None
    for call in (lambda: engine.cancel("U1", order.norenordno, 1.0),
                 lambda: engine.modify("U1", {"norenordno": order.norenordno, "qty": "65", "prc": "2",
                                              "prctyp": "LMT", "exch": "NFO", "tsym": NIFTY_CE}, 1.0)):
        try:
            call()
            raise AssertionError("a forgotten order was still found")
        except OrderError as exc:
            assert "not found" in str(exc)
    engine.set_ltp("NFO", NIFTY_CE, 0.5, 2.0)
    assert engine.step(3.0) == []  # it no longer matches


def test_notification_names_the_broker_id():
    snap = OrderSnapshot(command_id="c1", alert_id="a", client_id="p", source="webhook", strategy_name="S1",
                         execution_type="ENTRY", exchange="NFO", symbol=NIFTY_CE, side="BUY", quantity=130,
                         product="NRML", order_type="LIMIT", price=1.0, status="FAILED", tag="BROKER_UNKNOWN_ORDER",
                         broker_order_id="26010100000001", filled_qty=65, avg_price=1.0, created_at="x",
                         updated_at="x")
    note = describe_change(OrderChanged(order=snap, from_status="PARTIAL", to_status="FAILED",
                                        tag="BROKER_UNKNOWN_ORDER", prev_filled_qty=65))
    assert note.kind == "rejected"
    assert "BROKER_UNKNOWN_ORDER" in note.text and "26010100000001" in note.text and "65 filled" in note.text


# ---- the whole service against the paper exchange --------------------------------------------------

def _entry(system, alert_id: str, **leg) -> str:
    status, body = system.inject_alert(alert(strategy="S1", alert_id=alert_id, tradingsymbol=NIFTY_CE, **leg))
    assert status == 202, body
    return body["orders"][0]["command_id"]


def _resting(system, alert_id: str) -> dict:
    cid = _entry(system, alert_id, order_type="LIMIT", price=1.0)  # option prices are ~50..500: it rests
    return system.wait_until(lambda: (o := system.order(cid)) and o["broker_order_id"] and o, 10, "placed")


def _forget(paper, norenordno: str) -> None:
    reply = requests.post(f"{paper.base_url}/paper/forget", json={"norenordno": norenordno}, timeout=5)
    assert reply.status_code == 200, reply.text


def _notes(system, cid: str) -> list[dict]:
    return [n for n in system.notifications()["recent"] if n["command_id"] == cid]


def _watcher(system) -> dict:
    return system.registry.ask("watcher", GetWatcherStatus(), timeout=10)


def test_cancel_not_found_ends_broker_unknown_order_and_unblocks_the_strategy(make_system, paper):
    system = make_system()
    order = _resting(system, "rest")
    cid, bid = order["command_id"], order["broker_order_id"]
    dup = system.wait_for_status(_entry(system, "dup-before"), TERMINAL)
    assert dup["tag"] == "DUPLICATE_BLOCKED:OPEN_ORDER_EXISTS"  # the open order blocks a second entry

    _forget(paper, bid)
    reply = requests.post(f"{system.url}/orders/cancel", headers=system.operator_headers, json={"secret_key": SECRET, "strategy": "S1"}, timeout=5)
    assert reply.status_code == 202 and reply.json()["cancel_requested"] == [cid]
    failed = system.wait_for_status(cid, TERMINAL)
    assert (failed["status"], failed["tag"], failed["broker_order_id"]) == ("FAILED", "BROKER_UNKNOWN_ORDER", bid)
    (event,) = [e for e in failed["events"] if e["to_status"] == "FAILED"]
    assert (event["from_status"], event["tag"]) == ("SENT_TO_BROKER", "BROKER_UNKNOWN_ORDER")
    assert "CancelOrder" in event["detail"] and "absent from 2 OrderBook reads" in event["detail"]
    assert _watcher(system)["reads"].get("unknown-order", 0) >= 2
    note = system.wait_until(lambda: [n for n in _notes(system, cid) if n["kind"] == "rejected"], 5, "notified")[0]
    assert "BROKER_UNKNOWN_ORDER" in note["text"] and bid in note["text"]

    # It no longer blocks: the next entry of the strategy in the instrument goes through.
    again = system.wait_for_status(_entry(system, "after"), TERMINAL)
    assert again["status"] == "EXECUTED", again

    # Broker truth still wins if the order turns up filled after all.
    system.inject("watcher", BrokerOrderReport(remarks=cid, broker_order_id=bid, status="COMPLETE",
                                               filled_qty=65, avg_price=1.0, origin="inject"))
    assert system.wait_for_status(cid, "EXECUTED")["filled_qty"] == 65


def test_an_order_the_broker_forgets_is_found_out_without_a_cancel(make_system, paper):
    """No one cancels it: the quiet-order look-up (WebSocket up) or the book poll finds it missing."""
    for use_websocket in (True, False):
        system = make_system(broker={"use_websocket": use_websocket})
        order = _resting(system, f"quiet-{use_websocket}")
        _forget(paper, order["broker_order_id"])
        failed = system.wait_for_status(order["command_id"], TERMINAL, timeout=20)
        assert failed["tag"] == "BROKER_UNKNOWN_ORDER", (use_websocket, failed)
        system.stop()


def test_a_partly_filled_order_keeps_its_fills(make_system, paper_factory):
    exchange = paper_factory(fill_slice_qty=65, fill_delay_ms=1500)
    system = make_system(exchange=exchange)
    set_ltp(exchange, "NFO", NIFTY_CE, 100.0)
    cid = _entry(system, "partial", order_type="LIMIT", price=100.0, qty=130)
    partial = system.wait_for_status(cid, "PARTIAL")
    _forget(exchange, partial["broker_order_id"])  # before its second slice
    system.inject("broker", CancelOrder(command_id=cid, reason="test"))
    failed = system.wait_for_status(cid, TERMINAL)
    assert (failed["status"], failed["tag"], failed["filled_qty"]) == ("FAILED", "BROKER_UNKNOWN_ORDER", 65)


def test_failed_reads_prove_nothing(make_system, paper):
    """Missing only because the reads fail (HTTP 500): the order stays open; once reads succeed it ends."""
    system = make_system()
    order = _resting(system, "faulty")
    cid, bid = order["command_id"], order["broker_order_id"]
    _forget(paper, bid)
    budget = 100_000
    paper_faults(paper, http_500=budget)
    system.inject("watcher", BrokerOrderNotFound(command_id=cid, broker_order_id=bid, route="CancelOrder",
                                                 emsg="Rejected : ORA:Order not found to Cancel"))
    # Wait until the watcher has failed many reads (well over two poll intervals' worth of tries).
    system.wait_until(lambda: requests.get(f"{paper.base_url}/paper/faults", timeout=5).json()["http_500"]
                      <= budget - 10, 20, "failed reads")
    assert system.order(cid)["status"] == "SENT_TO_BROKER"
    assert _watcher(system)["unknown_suspects"] == [cid]
    requests.post(f"{paper.base_url}/paper/faults/reset", timeout=5).raise_for_status()
    assert system.wait_for_status(cid, TERMINAL)["tag"] == "BROKER_UNKNOWN_ORDER"


def test_a_suspicion_the_books_disprove_is_dropped(make_system, paper):
    """`Order not found` for an order the broker still lists (e.g. a stale answer): dropped, nothing changes."""
    system = make_system()
    order = _resting(system, "known")
    cid, bid = order["command_id"], order["broker_order_id"]
    before = _watcher(system)["reads"].get("unknown-order", 0)
    system.inject("watcher", BrokerOrderNotFound(command_id=cid, broker_order_id=bid, route="ModifyOrder",
                                                 emsg="Rejected : ORA:Order not found"))
    st = system.wait_until(lambda: (st := _watcher(system))["reads"].get("unknown-order", 0) > before
                           and not st["unknown_suspects"] and st, 10, "the suspicion checked and dropped")
    assert st["reads"]["unknown-order"] == before + 1  # the first book read listed it: no further checks
    assert system.order(cid)["status"] == "SENT_TO_BROKER"
    # and it is still cancellable the ordinary way
    requests.post(f"{system.url}/orders/cancel", headers=system.operator_headers, json={"secret_key": SECRET}, timeout=5).raise_for_status()
    assert system.wait_for_status(cid, TERMINAL)["tag"].startswith("BROKER_CANCELED")
