"""A registration that misses the 202 deadline but commits later still reaches the broker (never stuck CREATED)."""

import sqlite3
import threading

from conftest import alert, paper_orders


def test_alert_answered_503_but_committed_later_is_still_traded(make_system, paper):
    system = make_system()
    db_path = system.data_dir / "orders.db"
    blocker = sqlite3.connect(db_path, timeout=5, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock past the ingress deadline (2.5 s)
    released = threading.Timer(3.2, lambda: blocker.execute("ROLLBACK"))
    released.start()
    try:
        status, body = system.inject_alert(alert(alert_id="slow-commit"))
    finally:
        released.join()
        blocker.close()
    assert status == 503 and body["alert_id"] == "slow-commit"

    # The commit landed once the lock was free; its leg must go on to the broker, not sit CREATED.
    rows = system.wait_until(lambda: system.orders(strategy="S1"), 10, "the late registration")
    (order,) = rows
    done = system.wait_for_status(order["command_id"], ("EXECUTED", "FAILED"))
    assert done["status"] == "EXECUTED"
    assert len([o for o in paper_orders(paper) if o.get("remarks") == order["command_id"]]) == 1

    # The client's retry with the same alert_id gets the first answer and writes nothing new.
    status, again = system.inject_alert(alert(alert_id="slow-commit"))
    assert status == 200 and again["orders"][0]["command_id"] == order["command_id"]
    assert len(system.orders(strategy="S1")) == 1
