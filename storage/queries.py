"""Read-only queries shared by the read API and the `oms` command (readers may read the database directly)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from peewee import fn

from storage import transitions as T
from storage.models import Order, OrderEvent


def order_dict(row: Order) -> dict:
    return dict(row.__data__)


def list_orders(status: str | None = None, strategy: str | None = None, symbol: str | None = None,
                limit: int = 100) -> list[dict]:
    query = Order.select().order_by(Order.id.desc())
    if status:
        query = query.where(Order.status == status.upper())
    if strategy:
        query = query.where(Order.strategy_name == strategy)
    if symbol:
        query = query.where(Order.symbol == symbol)
    return [order_dict(r) for r in query.limit(max(1, min(int(limit), 10000)))]


def get_order(command_id: str) -> dict | None:
    row = Order.get_or_none(Order.command_id == command_id)
    if row is None:
        return None
    data = order_dict(row)
    data["events"] = [
        {k: v for k, v in e.__data__.items() if k != "id"}
        for e in OrderEvent.select().where(OrderEvent.command_id == command_id).order_by(OrderEvent.id)
    ]
    return data


def counts_by_status() -> dict[str, int]:
    counts = {s: 0 for s in T.STATUSES}
    for status, n in Order.select(Order.status, fn.COUNT(Order.id)).group_by(Order.status).tuples():
        counts[status] = n
    return counts


# Broker statuses that do not show the order working at the exchange yet.
UNCONFIRMED_BROKER_STATUSES = ("PENDING",)


def stuck_orders(older_than_s: float, now: datetime | None = None) -> list[dict]:
    """Non-terminal orders without broker confirmation, unchanged for longer than older_than_s.

    Confirmation is the broker's own word: a broker_status other than PENDING, or fills. A resting LIMIT the
    broker reports OPEN (or an SL order TRIGGER_PENDING) is healthy however old it is. Stuck: a CREATED order
    (never sent), and a SENT_TO_BROKER order the broker has not (or only as PENDING) reported on.
    """
    now = now or datetime.now(timezone.utc)
    cutoff = (now - timedelta(seconds=older_than_s)).isoformat(timespec="microseconds")
    unconfirmed = (Order.status == T.CREATED) | (
        (Order.filled_qty == 0)
        & (Order.broker_status.is_null() | Order.broker_status.in_(list(UNCONFIRMED_BROKER_STATUSES))))
    query = (Order.select()
             .where(Order.status.in_(list(T.NON_TERMINAL)) & (Order.updated_at < cutoff) & unconfirmed)
             .order_by(Order.updated_at))
    return [order_dict(r) for r in query]


def strategy_positions() -> list[dict]:
    """Net position per strategy, exchange, symbol and product, from our own fills."""
    rows: dict[tuple, int] = {}
    for r in Order.select(Order.strategy_name, Order.exchange, Order.symbol, Order.product, Order.side,
                          fn.SUM(Order.filled_qty)).where(Order.filled_qty > 0).group_by(
            Order.strategy_name, Order.exchange, Order.symbol, Order.product, Order.side).tuples():
        strategy, exch, sym, prd, side, qty = r
        key = (strategy, exch, sym, prd)
        rows[key] = rows.get(key, 0) + (qty if side == "BUY" else -qty)
    return [
        {"strategy_name": k[0], "exchange": k[1], "symbol": k[2], "product": k[3], "net_qty": v}
        for k, v in sorted(rows.items()) if v != 0
    ]
