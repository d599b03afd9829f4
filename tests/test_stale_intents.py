"""Intents of an earlier trading day are never sent, however large max_signal_age_s is."""

from datetime import datetime, timedelta, timezone

from actors.store import OrderStore
from conftest import paper_orders
from messages.commands import RegisterAlert
from messages.orders import NewOrder
from storage.db import close_database, open_database
from storage.models import Order
from tests.symbols import NIFTY_CE


def _leg(command_id: str, alert_id: str, execution_type: str) -> NewOrder:
    return NewOrder(command_id=command_id, alert_id=alert_id, client_id="paper", source="webhook",
                    strategy_name="S1", execution_type=execution_type, exchange="NFO", symbol=NIFTY_CE,
                    side="BUY", quantity=65, product="NRML", order_type="MARKET")


def test_created_legs_of_an_earlier_trading_day_expire_at_restart(make_system, paper, tmp_path):
    data_dir = tmp_path / "stale"
    db = open_database(data_dir / "orders.db")
    store = OrderStore(db)
    store.register_alert(RegisterAlert(alert_id="old-entry", source="webhook", legs=(_leg("omsstaleentry00001", "old-entry", "ENTRY"),)))
    store.register_alert(RegisterAlert(alert_id="old-exit", source="webhook", legs=(_leg("omsstaleexit000001", "old-exit", "EXIT"),)))
    yesterday = (datetime.now(timezone.utc) - timedelta(days=1, hours=1)).isoformat(timespec="microseconds")
    Order.update(created_at=yesterday, updated_at=yesterday).execute()
    close_database(db)

    system = make_system(data_dir=data_dir, service={"max_signal_age_s": 7 * 24 * 3600})
    for cid in ("omsstaleentry00001", "omsstaleexit000001"):
        order = system.order(cid)
        assert (order["status"], order["tag"]) == ("FAILED", "EXPIRED_ON_RESTART")
        assert order["events"][-1]["detail"] == "created on an earlier trading day"
    assert not [o for o in paper_orders(paper) if str(o.get("remarks", "")).startswith("omsstale")]
