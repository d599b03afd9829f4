"""The watcher reads the whole OrderBook only when something may have been missed, and forwards only the rows
that change something in the database.

Pure parts first (Silence, the EXECUTED shortcut against `plan_broker_update`), then BookReconciler against a
real SQLite file and a real paper exchange, then the whole service: one book read at start, none while the
WebSocket is healthy and nothing is due, a look-up for an order whose push never came, a read after every
reconnection. Ticks are told to the watcher by the tests where a test must know exactly how many there were
(the poll interval is then longer than the test).
"""

from __future__ import annotations

import itertools

import pyotp
import pytest

from actors.store import OrderStore
from actors.watcher import (
    SETTLED,
    BookReconciler,
    PollFilter,
    Silence,
    by_remarks,
    report_changes,
    report_from_row,
    view_of_row,
)
from messages.commands import BrokerOrderReport, Notify, RegisterAlert, Tick, TransitionOrder
from messages.noren import OrderBookEntry, PlaceOrderRequest
from messages.orders import NewOrder
from messages.store import Sync
from messages.watcher import GetWatcherStatus, LookUp, WsStateChanged
from runtime.noren.rest import NorenRestClient
from storage import transitions as T
from storage.db import close_database, open_database
from storage.models import ExternalOrder, Order
from tests.conftest import alert, paper_faults, set_ltp
from tests.faults import FaultyRegistry
from tests.symbols import NIFTY_CE, NIFTY_PE

SYM = NIFTY_CE
PUT = NIFTY_PE
NO_TICKS = 30.0  # a poll interval longer than any test: the watcher never ticks on its own
FAR_BELOW = 1.0  # a BUY LIMIT at 1.0 rests OPEN (option prices on the paper exchange are ~50..500)


# ---- pure parts -----------------------------------------------------------------------------------


def test_silence_an_order_never_heard_of_is_due_after_unheard_s():
    s = Silence(quiet_s=10.0, unheard_s=4.0, max_s=30.0)
    s.track(["c1"], {"c1"}, now=100.0)
    assert s.overdue(103.9) == []
    assert s.overdue(104.0) == ["c1"]


def test_silence_a_push_resets_the_wait_and_a_lookup_doubles_it_up_to_max():
    s = Silence(quiet_s=10.0, unheard_s=4.0, max_s=30.0)
    s.heard("c1", 99.0)  # pushed before the watcher saw it open
    s.track(["c1"], {"c1"}, now=100.0)
    assert s.overdue(108.9) == [] and s.overdue(109.0) == ["c1"]
    s.looked_up(110.0)
    assert s.due["c1"] == 130.0  # 20 s
    s.looked_up(130.0)
    assert s.due["c1"] == 160.0  # 40 s capped at 30
    s.heard("c1", 131.0)
    assert s.due["c1"] == 141.0 and s.wait["c1"] == 10.0


def test_silence_forgets_orders_that_are_no_longer_open():
    s = Silence(quiet_s=10.0, unheard_s=4.0, max_s=30.0)
    s.heard("gone", 1.0)
    s.track(["c1", "c2"], {"c1", "c2", "no-id"}, now=0.0)
    s.heard("no-id", 1.0)
    s.track(["c2"], {"c2", "no-id"}, now=2.0)
    assert set(s.due) == {"c2"} and set(s.heard_at) == {"no-id"}


def _row(**fields) -> OrderBookEntry:
    return OrderBookEntry.model_validate({"stat": "Ok", "exch": "NFO", "tsym": SYM, "trantype": "B", "qty": "65",
                                          **{k: v for k, v in fields.items() if v is not None}})


STATES = [T.OrderState(status, filled, avg, bid, tag)
          for status, filled, avg, bid, tag in itertools.product(
              T.STATUSES, (0, 30, 65), (None, 0.0, 100.0), (None, "", "B1"), (None, "LOST_IN_FLIGHT"))]
ROWS = [_row(norenordno=bid, remarks="c1", status=status, fillshares=filled, avgprc=avg, rejreason=reason)
        for status, filled, avg, bid, reason in itertools.product(
            ("OPEN", "COMPLETE", "REJECTED", "CANCELED", "Cancelled", "TRIGGER_PENDING", None, "ODD"),
            ("0", "30", "65"), (None, "100.00", "101.50"), ("B1", "B2", None), (None, "RMS: margin"))]


def test_the_executed_shortcut_agrees_with_plan_broker_update_everywhere():
    for current in STATES:
        for row in ROWS:
            full = T.report_changes_order(current, view_of_row(row))
            assert report_changes(current, row) == full, (current, row)


def test_by_remarks_sql_settles_exactly_the_rows_the_shortcut_settles(tmp_path):
    """The SQL shortcut (rows it leaves out are SETTLED) against report_changes on the same states."""
    db = open_database(tmp_path / "orders.db")
    try:
        store = OrderStore(db)
        cases = []
        for n, current in enumerate(STATES):
            command_id = f"omsgrid{n:06d}"
            store.register_alert(RegisterAlert(alert_id=f"a{n}", source="webhook", strategy_name="S",
                                               legs=(leg(command_id, f"a{n}"),)))
            Order.update(status=current.status, filled_qty=current.filled_qty, avg_price=current.avg_price,
                         broker_order_id=current.broker_order_id, tag=current.tag).where(
                Order.command_id == command_id).execute()
            cases.append((command_id, current))
        rows = [_row(norenordno="B1", remarks=command_id, status=status, fillshares=filled, avgprc="100.00")
                for command_id, _ in cases
                for status, filled in (("COMPLETE", "65"), ("COMPLETE", "30"), ("OPEN", "0"))]
        rows.append(_row(norenordno="X9", remarks="not-ours", status="COMPLETE", fillshares="1", avgprc="1.00"))
        answers = by_remarks(rows)
        states = dict(cases)
        for row, answer in zip(rows, answers):
            if row.remarks == "not-ours":
                assert answer is None
            elif answer is SETTLED:
                assert not report_changes(states[row.remarks], row), (states[row.remarks], row)
            else:
                assert answer == states[row.remarks], (answer, states[row.remarks])
    finally:
        close_database(db)


def test_poll_filter_forget_open_keeps_forwarded_terminal_rows():
    f = PollFilter()
    f.remember("B1", ("OPEN", 0, None))
    f.remember("B2", ("COMPLETE", 65, 100.0))
    f.forget_open()
    assert f.seen == {"B2": ("COMPLETE", 65, 100.0)}


# ---- a real database and a real paper exchange -------------------------------------------------------


def leg(command_id: str, alert_id: str, strategy: str = "S", symbol: str = SYM) -> NewOrder:
    return NewOrder(command_id=command_id, alert_id=alert_id, client_id="paper", source="webhook",
                    strategy_name=strategy, execution_type="ENTRY", exchange="NFO", symbol=symbol, side="BUY",
                    quantity=65, product="NRML", order_type="MARKET")


def client_of(exchange, uid: str = "TEST1") -> NorenRestClient:
    client = NorenRestClient(exchange.rest_url)
    client.login_quickauth(uid, "any-password", pyotp.random_base32(), "VC", "api-secret", "test-imei")
    return client


def place(client, remarks: str, prctyp: str = "MKT", prc: float = 0.0) -> str:
    return client.place_order(PlaceOrderRequest(exch="NFO", tsym=SYM, qty=65, prc=prc, prd="M", trantype="B",
                                                prctyp=prctyp, ret="DAY", remarks=remarks))


@pytest.fixture
def mkt_paper(paper_factory):
    return paper_factory(reject_market_orders=False, fill_delay_ms=0)


def cid(name: str) -> str:
    return f"oms{name:0>17}"


def seed_start_scenario(exchange, db) -> dict:
    """Orders at the exchange and rows in the database, one of each kind the start-up read meets.

    Returns name -> broker order id. Forwarded must be exactly: lagging, unknown, lost, by_id, manual_new."""
    store = OrderStore(db)
    client = client_of(exchange)
    ids = {}
    try:
        for name in ("settled1", "settled2", "lagging", "unknown", "lost", "resting"):
            store.register_alert(RegisterAlert(alert_id=name, source="webhook", strategy_name=name.upper(),
                                               legs=(leg(cid(name), name, name.upper()),)))
            store.transition(TransitionOrder(command_id=cid(name), to_status=T.SENT_TO_BROKER,
                                             expect_from=(T.CREATED,)))
            ids[name] = place(client, cid(name), "LMT", FAR_BELOW) if name == "resting" else place(client, cid(name))
        cid_by_id = "omsbybrokerid0000001"
        store.register_alert(RegisterAlert(alert_id="byid", source="webhook", strategy_name="BYID",
                                           legs=(leg(cid_by_id, "byid", "BYID"),)))
        store.transition(TransitionOrder(command_id=cid_by_id, to_status=T.SENT_TO_BROKER, expect_from=(T.CREATED,)))
        ids["by_id"] = place(client, "remarks-the-broker-lost")
        ids["manual_new"] = place(client, "manual-new")
        ids["manual_known"] = place(client, "manual-known")
        book = {row.norenordno: row for row in client.order_book()}
    finally:
        client.close()

    def apply(norenordno):  # what the store made of that row when it saw it: the database agrees with it
        result, _ = store.apply_broker_report(
            BrokerOrderReport(**{**_report_fields(book[norenordno]), "origin": "ws"}))
        return result

    apply(ids["settled1"])
    apply(ids["settled2"])
    apply(ids["resting"])  # OPEN: the broker id is recorded, nothing else
    apply(ids["manual_known"])  # recorded as external
    # lagging: has its broker id, but its fill was never applied (a missed push)
    Order.update(broker_order_id=ids["lagging"]).where(Order.command_id == cid("lagging")).execute()
    # unknown: SENT_TO_BROKER without broker id (PlaceOrder's answer was lost) - left as it is
    # lost: the watcher gave up on it, yet it is at the broker
    store.transition(TransitionOrder(command_id=cid("lost"), to_status=T.FAILED,
                                     expect_from=(T.SENT_TO_BROKER,), tag="LOST_IN_FLIGHT"))
    Order.update(broker_order_id=ids["by_id"]).where(Order.command_id == cid_by_id).execute()
    return ids


def _report_fields(row) -> dict:
    return report_from_row(row, "poll").model_dump()


def test_reconciler_forwards_only_rows_that_change_something(mkt_paper, tmp_path):
    db = open_database(tmp_path / "orders.db")
    try:
        ids = seed_start_scenario(mkt_paper, db)
        client = client_of(mkt_paper)
        try:
            book = client.order_book()
        finally:
            client.close()
        assert len(book) == 9 and all(row.status == "COMPLETE" for row in book if row.norenordno != ids["resting"])
        reconciler = BookReconciler()

        first = reconciler.select(book)
        expected = {ids[n] for n in ("lagging", "unknown", "lost", "by_id", "manual_new")}
        assert {r.broker_order_id for r in first} == expected
        assert all(r.origin == "poll" for r in first)
        # Kept: the open row (unchanged open rows need no database read) and the forwarded terminal rows.
        assert set(reconciler.filter.seen) == expected | {ids["resting"]}

        # The store has not applied them yet: nothing is forwarded twice.
        assert reconciler.select(book) == []

        store = OrderStore(db)
        for report in first:
            store.apply_broker_report(report)
        assert reconciler.select(book) == []
        assert set(reconciler.filter.seen) == {ids["resting"]}  # settled rows are not kept: bounded memory
        for name in ("lagging", "unknown", "by_id"):
            assert Order.get(Order.broker_order_id == ids[name]).status == T.EXECUTED
        lost = Order.get(Order.command_id == cid("lost"))
        assert (lost.status, lost.broker_order_id) == (T.EXECUTED, ids["lost"])
        assert ExternalOrder.get(ExternalOrder.broker_order_id == ids["manual_new"]).status == "COMPLETE"

        # A full reconcile compares the open rows again; the resting order still agrees.
        reconciler.filter.forget_open()
        assert reconciler.select(book) == []
        # A row that left the book (a new trading day) is forgotten.
        reconciler.select([row for row in book if row.norenordno != ids["resting"]])
        assert reconciler.filter.seen == {}
    finally:
        close_database(db)


def test_reconciler_forwards_an_external_order_again_only_when_it_moved(mkt_paper, tmp_path):
    db = open_database(tmp_path / "orders.db")
    try:
        client = client_of(mkt_paper)
        try:
            oid = place(client, "by-hand", "LMT", FAR_BELOW)
            book = client.order_book()
        finally:
            client.close()
        store = OrderStore(db)
        reconciler = BookReconciler()
        first = reconciler.select(book)
        assert [r.broker_order_id for r in first] == [oid]
        store.apply_broker_report(first[0])
        reconciler.filter.forget()
        assert reconciler.select(book) == []  # recorded, same status and fills: not news
        set_ltp(mkt_paper, "NFO", SYM, 0.95)  # it fills
        client = client_of(mkt_paper)
        try:
            book = client.order_book()
        finally:
            client.close()
        moved = reconciler.select(book)
        assert [(r.broker_order_id, r.status) for r in moved] == [(oid, "COMPLETE")]
    finally:
        close_database(db)


# ---- the whole service ------------------------------------------------------------------------------


def status(system) -> dict:
    return system.registry.ask("watcher", GetWatcherStatus(), timeout=10)


def ticks(system, n: int) -> dict:
    """Tell the watcher n poll ticks; returns its status once it has handled them."""
    for _ in range(n):
        system.inject("watcher", Tick(name="poll"))
    return status(system)


def one_leg(system, payload) -> str:
    code, body = system.inject_alert(payload)
    assert code == 202, (code, body)
    return body["orders"][0]["command_id"]


def events(system, command_id: str) -> list[dict]:
    return system.order(command_id)["events"]


def test_start_reads_the_book_once_and_forwards_only_what_changes(make_system, mkt_paper, tmp_path):
    data_dir = tmp_path / "start"
    db = open_database(data_dir / "orders.db")
    try:
        ids = seed_start_scenario(mkt_paper, db)
        before = {o.command_id: (o.status, o.filled_qty, o.avg_price, o.broker_order_id, o.updated_at)
                  for o in Order.select()}
    finally:
        close_database(db)

    system = make_system(exchange=mkt_paper, data_dir=data_dir, broker={"poll_interval_s": NO_TICKS})
    # Reconciled before the listener opened, with one OrderBook read even though the WebSocket connected.
    for name in ("lagging", "unknown", "by_id"):
        order = [o for o in system.orders() if o["broker_order_id"] == ids[name]]
        assert order and order[0]["status"] == "EXECUTED", (name, order)
    lost = system.order(cid("lost"))
    assert (lost["status"], lost["broker_order_id"]) == ("EXECUTED", ids["lost"])
    assert [e["to_status"] for e in lost["events"]] == ["CREATED", "SENT_TO_BROKER", "FAILED", "EXECUTED"]
    for name in ("settled1", "settled2", "resting"):
        row = Order.get(Order.command_id == cid(name))
        assert (row.status, row.filled_qty, row.avg_price, row.broker_order_id, row.updated_at) == before[cid(name)]
    assert ExternalOrder.get(ExternalOrder.broker_order_id == ids["manual_new"]).status == "COMPLETE"
    assert status(system)["ws"] == "connected"
    st = status(system)
    assert sum(st["reads"].values()) == 1, st
    assert st["forwarded"] == 5, st
    assert st["filter_size"] == 6  # the resting order, and the forwarded rows until a read confirms them
    system.registry.ask("store", Sync(), timeout=5)
    assert system.registry.ask("watcher", LookUp(), timeout=5) is True  # WebSocket healthy: at the next tick
    st = ticks(system, 1)
    assert st["reads"].get("lookup") == 1 and st["forwarded"] == 5, st
    assert st["filter_size"] == 1  # settled rows are not kept
    # The settled orders never reached the store as reports: no event, no notification.
    assert not [n for n in system.notifications()["recent"] if n["kind"] == "external"
                and ids["manual_known"] in n["text"]]


def test_with_a_healthy_websocket_ticks_read_nothing_until_something_is_due(make_system, paper):
    system = make_system(broker={"poll_interval_s": NO_TICKS})
    system.wait_until(lambda: status(system)["ws"] == "connected", 10, "the WebSocket")
    order_id = one_leg(system, alert())
    order = system.wait_for_status(order_id, "EXECUTED", timeout=10)
    assert "via ws" in [e for e in order["events"] if e["to_status"] == "EXECUTED"][0]["detail"]
    reads = sum(status(system)["reads"].values())
    st = ticks(system, 5)
    assert sum(st["reads"].values()) == reads, st  # nothing open, nothing quiet, the reconcile not due
    assert st["filter_size"] == 0

    # A resting order that gets its pushes is not looked up either (its quiet period is 5 intervals).
    resting = one_leg(system, alert(strategy="S2", order_type="LIMIT", price=FAR_BELOW))
    system.wait_until(lambda: system.order(resting)["broker_order_id"], 5, "a broker id")
    st = ticks(system, 3)
    assert sum(st["reads"].values()) == reads, st


def test_a_push_that_never_came_is_found_by_looking_the_quiet_order_up(make_system, paper):
    # reconcile every 15 s; unheard orders after 2 s
    system = make_system(broker={"poll_interval_s": 1.0}, registry=FaultyRegistry())
    system.wait_until(lambda: status(system)["ws"] == "connected", 10, "the WebSocket")
    system.wait_until(lambda: sum(status(system)["reads"].values()) >= 1, 10, "the start-up read")
    lost_pushes = []

    def is_push_for_the_order(message):
        hit = isinstance(message, BrokerOrderReport) and message.origin == "ws" and message.symbol == PUT
        if hit:
            lost_pushes.append(message.status)
        return hit

    system.registry.drop_messages("watcher", is_push_for_the_order, times=1000)
    order_id = one_leg(system, alert(tradingsymbol=PUT))
    order = system.wait_for_status(order_id, "EXECUTED", timeout=12)
    executed = [e for e in order["events"] if e["to_status"] == "EXECUTED"][0]
    assert "via poll" in executed["detail"]
    assert lost_pushes, "the pushes were never dropped: the test proves nothing"
    assert status(system)["reads"].get("order-history", 0) >= 1, status(system)


def book_reads(st: dict) -> int:
    return sum(n for reason, n in st["reads"].items() if reason != "order-history")


def test_a_quiet_resting_order_is_looked_up_on_its_own_not_with_the_whole_book(make_system, paper):
    system = make_system(broker={"poll_interval_s": 1.0})  # quiet after 5 s, reconcile every 15 s
    system.wait_until(lambda: status(system)["ws"] == "connected", 10, "the WebSocket")
    system.wait_until(lambda: book_reads(status(system)) >= 1, 10, "the start-up read")
    resting = one_leg(system, alert(order_type="LIMIT", price=FAR_BELOW))
    system.wait_until(lambda: system.order(resting)["broker_order_id"], 5, "a broker id")
    before = book_reads(status(system))
    st = system.wait_until(lambda: (st := status(system))["reads"].get("order-history", 0) >= 1 and st, 12,
                           "a SingleOrdHist look-up of the quiet order")
    assert book_reads(st) == before, st
    assert system.order(resting)["status"] == "SENT_TO_BROKER"  # still resting: nothing to write
    assert st["forwarded"] == 0, st


def test_every_reconnection_reads_the_book_again(make_system, paper):
    system = make_system(broker={"poll_interval_s": NO_TICKS})
    system.wait_until(lambda: status(system)["ws"] == "connected", 10, "the WebSocket")
    assert status(system)["reads"].get("reconnect", 0) == 0
    paper_faults(paper, drop_websockets=True)
    system.wait_until(lambda: status(system)["reads"].get("reconnect", 0) == 1, 10, "the read after reconnecting")
    assert status(system)["ws"] == "connected"


def test_unknown_outcome_with_a_healthy_websocket_becomes_lost_in_flight(make_system, paper):
    system = make_system(broker={"poll_interval_s": 0.2, "request_timeout_s": 0.5, "lost_grace_s": 1.0,
                                 "lost_min_lookups": 2, "market_protection": False})
    system.wait_until(lambda: status(system)["ws"] == "connected", 10, "the WebSocket")
    paper_faults(paper, http_500=1)
    order_id = one_leg(system, alert())
    lost = system.wait_for_status(order_id, "FAILED", timeout=10)
    assert (lost["tag"], lost["broker_order_id"]) == ("LOST_IN_FLIGHT", None)
    st = status(system)
    assert st["reads"].get("unknown-outcome", 0) + st["reads"].get("lookup", 0) >= 2, st


def test_without_websocket_every_tick_reads_while_an_order_is_open(make_system, paper):
    system = make_system(broker={"use_websocket": False, "poll_interval_s": NO_TICKS})
    resting = one_leg(system, alert(order_type="LIMIT", price=FAR_BELOW))
    system.wait_until(lambda: system.order(resting)["broker_order_id"], 5, "a broker id")
    before = status(system)["reads"].get("poll", 0)
    assert ticks(system, 3)["reads"].get("poll", 0) == before + 3
    set_ltp(paper, "NFO", SYM, 0.95)  # it fills (after the exchange's fill delay); no push can tell us

    def polled_until_executed():
        ticks(system, 1)
        system.registry.ask("store", Sync(), timeout=5)
        return system.order(resting)["status"] == "EXECUTED"

    system.wait_until(polled_until_executed, 5, "the fill through a poll")


def test_registry_drop_messages_loses_only_the_matching_messages(make_system, paper):
    system = make_system(broker={"poll_interval_s": NO_TICKS}, registry=FaultyRegistry())
    system.registry.drop_messages("notifier", lambda m: isinstance(m, Notify) and m.text == "lose me", times=5)
    system.inject("notifier", Notify(kind="test", text="lose me"))
    system.inject("notifier", Notify(kind="test", text="keep me"))
    texts = [n["text"] for n in system.notifications()["recent"] if n["kind"] == "test"]
    assert texts == ["keep me"]


def test_a_connection_announced_after_the_start_up_read_is_read_again(make_system, paper):
    """The start-up read covers a connection made before it, never one made after it (the gap between the
    read and the subscription). Without a socket of its own, the service is told what the broker would say."""
    system = make_system(broker={"use_websocket": False, "poll_interval_s": NO_TICKS})
    assert status(system)["reads"] == {"start-up": 1}
    system.inject("watcher", WsStateChanged(state="connected"))
    assert status(system)["reads"] == {"start-up": 1, "reconnect": 1}
    assert ticks(system, 3)["reads"] == {"start-up": 1, "reconnect": 1}  # connected, and nothing is due
