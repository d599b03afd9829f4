"""An EXIT supersedes the strategy's resting entry orders on that instrument: they are cancelled at the broker."""

from conftest import alert, paper_orders
from tests.symbols import NIFTY_CE

SYM = NIFTY_CE


def test_exit_cancels_a_resting_entry_at_the_broker(make_system, paper):
    system = make_system()
    status, body = system.inject_alert(alert(alert_id="entry", order_type="LIMIT", price=1.0))
    assert status == 202
    entry = body["orders"][0]["command_id"]
    system.wait_until(lambda: (system.order(entry) or {}).get("broker_order_id"), what="entry placed")

    status, body = system.inject_alert(alert(execution_type="EXIT", alert_id="exit"))
    exit_id = body["orders"][0]["command_id"]

    exit_order = system.wait_for_status(exit_id, "FAILED")
    assert exit_order["tag"] == "GUARD_BLOCKED:NO_POSITION"  # nothing was held
    cancelled = system.wait_for_status(entry, "FAILED")
    assert cancelled["tag"].startswith("BROKER_CANCELED") and cancelled["filled_qty"] == 0
    at_exchange = [o for o in paper_orders(paper) if o.get("remarks") == entry]
    assert len(at_exchange) == 1 and at_exchange[0]["status"] == "CANCELED"
