"""The read API and the webhook over the real HTTP listener (waitress), against the paper exchange."""

from __future__ import annotations

import pytest
import requests

from tests.conftest import alert, paper_faults, paper_orders
from tests.symbols import NIFTY_CE, NIFTY_PE

SYM = NIFTY_CE
PUT = NIFTY_PE
TERMINAL = ("EXECUTED", "FAILED")
ORDER_COLUMNS = {
    "command_id", "alert_id", "client_id", "source", "strategy_name", "execution_type", "exchange", "symbol",
    "side", "quantity", "product", "order_type", "price", "trigger_price", "status", "tag", "broker_order_id",
    "filled_qty", "avg_price", "created_at", "updated_at",
}
EVENT_COLUMNS = {"command_id", "from_status", "to_status", "tag", "detail", "at"}


def post_alert(system, payload) -> str:
    reply = requests.post(system.url + "/webhook", json=payload, timeout=5)
    assert reply.status_code == 202, (reply.status_code, reply.text)
    assert reply.headers["Content-Type"].startswith("application/json")
    return reply.json()["orders"][0]["command_id"]


def get(system, path, **params):
    return requests.get(system.url + path, params=params or None, timeout=5,
                        headers={} if path == "/health" else system.operator_headers)


@pytest.fixture
def populated(make_system, paper):
    """One EXECUTED entry (S1), one FAILED exit (S2, nothing held), one open LIMIT (S3, other symbol)."""
    system = make_system()
    executed = post_alert(system, alert(strategy="S1", alert_id="h-1"))
    failed = post_alert(system, alert(strategy="S2", execution_type="EXIT", alert_id="h-2", direction="SELL"))
    resting = post_alert(system, alert(strategy="S3", alert_id="h-3", tradingsymbol=PUT, order_type="LIMIT",
                                       price=1.0))
    system.wait_for_status(executed, "EXECUTED")
    system.wait_for_status(failed, "FAILED")
    system.wait_until(lambda: (o := system.order(resting)) and o["broker_order_id"], 10, "the resting order")
    return system, {"executed": executed, "failed": failed, "resting": resting}


def test_health(make_system):
    system = make_system()
    reply = get(system, "/health")
    assert reply.status_code == 200
    assert reply.json()["status"] == "ok" and reply.json()["accepting"] is True


def test_orders_lists_with_filters_and_limit(populated):
    system, ids = populated
    every = get(system, "/orders")
    assert every.status_code == 200
    rows = every.json()
    assert {r["command_id"] for r in rows} == set(ids.values())
    assert all(ORDER_COLUMNS <= set(r) for r in rows), "JSON field names must be the column names"
    assert [r["command_id"] for r in rows] == [ids["resting"], ids["failed"], ids["executed"]], "newest first"

    by_status = get(system, "/orders", status="EXECUTED").json()
    assert [r["command_id"] for r in by_status] == [ids["executed"]]
    assert [r["command_id"] for r in get(system, "/orders", status="failed").json()] == [ids["failed"]]
    assert [r["command_id"] for r in get(system, "/orders", strategy="S3").json()] == [ids["resting"]]
    assert {r["command_id"] for r in get(system, "/orders", symbol=SYM).json()} == {ids["executed"], ids["failed"]}
    combined = get(system, "/orders", status="FAILED", strategy="S2", symbol=SYM).json()
    assert [r["command_id"] for r in combined] == [ids["failed"]]
    assert get(system, "/orders", status="EXECUTED", strategy="S2").json() == []
    limited = get(system, "/orders", limit=1).json()
    assert [r["command_id"] for r in limited] == [ids["resting"]]
    assert get(system, "/orders", limit="many").status_code == 400


def test_order_by_id_has_events_and_unknown_is_404(populated):
    system, ids = populated
    reply = get(system, f"/orders/{ids['executed']}")
    assert reply.status_code == 200
    order = reply.json()
    assert ORDER_COLUMNS <= set(order)
    assert (order["status"], order["filled_qty"]) == ("EXECUTED", 65)
    assert [e["to_status"] for e in order["events"]] == ["CREATED", "SENT_TO_BROKER", "EXECUTED"]
    assert all(EVENT_COLUMNS <= set(e) for e in order["events"])

    failed = get(system, f"/orders/{ids['failed']}").json()
    assert failed["tag"] == "GUARD_BLOCKED:NO_POSITION"
    assert [(e["to_status"], e["tag"]) for e in failed["events"]] == [
        ("CREATED", None), ("FAILED", "GUARD_BLOCKED:NO_POSITION")]

    missing = get(system, "/orders/oms-no-such-order")
    assert missing.status_code == 404 and "error" in missing.json()
    assert get(system, "/no/such/route").status_code == 404


def test_positions(populated, paper):
    system, ids = populated
    reply = get(system, "/positions")
    assert reply.status_code == 200
    [row] = reply.json()
    assert {k: row[k] for k in ("strategy_name", "exchange", "symbol", "product", "net_qty")} == {
        "strategy_name": "S1", "exchange": "NFO", "symbol": SYM, "product": "NRML", "net_qty": 65}
    assert row["avg_price"] > 0 and row["realized_pnl"] == 0.0
    assert set(row) == {"strategy_name", "exchange", "symbol", "product", "net_qty", "avg_price", "last_price",
                        "realized_pnl", "unrealized_pnl"}


def test_diagnostics_counts_by_status(populated):
    system, ids = populated
    reply = get(system, "/diagnostics")
    assert reply.status_code == 200
    data = reply.json()
    assert data["counts"] == {"CREATED": 0, "SENT_TO_BROKER": 1, "PARTIAL": 0, "EXECUTED": 1, "FAILED": 1}
    assert data["stuck"] == []  # the resting order is seconds old, far below service.stuck_after_s


def test_diagnostics_names_stuck_orders(make_system, paper):
    """Stuck = non-terminal without broker confirmation. The exchange holds the PlaceOrder reply and nothing
    (no WebSocket, no polling of our own) tells the service about the order."""
    paper_faults(paper, hang_place_orders=1)
    system = make_system(service={"stuck_after_s": 0.05},
                         broker={"use_websocket": False, "poll_interval_s": 60.0, "request_timeout_s": 10.0})
    hung = post_alert(system, alert(alert_id="stuck", order_type="LIMIT", price=1.0))
    stuck = system.wait_until(lambda: get(system, "/diagnostics").json()["stuck"], 5, "the order to be stuck")
    assert [o["command_id"] for o in stuck] == [hung] and stuck[0]["broker_status"] is None


def test_webhook_only_accepts_post_and_json_errors_are_json(make_system, paper):
    system = make_system()
    assert requests.get(system.url + "/webhook", timeout=5).status_code == 405
    bad = requests.post(system.url + "/webhook", data=b"{not json", timeout=5,
                        headers={"Content-Type": "application/json"})
    assert bad.status_code == 400
    assert bad.json()["errors"] and "JSON" in bad.json()["error"] + " ".join(bad.json()["errors"])
    assert requests.post(system.url + "/webhook", json=alert(secret="nope"), timeout=5).status_code == 401
    assert get(system, "/orders").json() == []
    assert paper_orders(paper) == []
