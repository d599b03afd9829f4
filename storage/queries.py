"""Read-only queries shared by the read API and the `oms` command (readers may read the database directly)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import NamedTuple

from peewee import fn

from messages.orders import OrderSnapshot
from storage import transitions as T
from storage.models import LedgerAdjustment, Order, OrderEvent


def order_dict(row: Order) -> dict:
    return dict(row.__data__)


def list_orders(status: str | None = None, strategy: str | None = None, symbol: str | None = None,
                limit: int = 100) -> list[dict]:
    query = _order_filters(Order.select().order_by(Order.id.desc()), status, strategy, symbol, None, None)
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
    """Net position per strategy, exchange, symbol and product, from our own fills and the write-offs the
    broker's truth forced (ledger_adjustments)."""
    rows: dict[tuple, int] = {}
    for r in Order.select(Order.strategy_name, Order.exchange, Order.symbol, Order.product, Order.side,
                          fn.SUM(Order.filled_qty)).where(Order.filled_qty > 0).group_by(
            Order.strategy_name, Order.exchange, Order.symbol, Order.product, Order.side).tuples():
        strategy, exch, sym, prd, side, qty = r
        key = (strategy, exch, sym, prd)
        rows[key] = rows.get(key, 0) + (qty if side == "BUY" else -qty)
    for strategy, exch, sym, prd, qty in ledger_adjustment_rows():
        key = (strategy, exch, sym, prd)
        rows[key] = rows.get(key, 0) + qty
    return [
        {"strategy_name": k[0], "exchange": k[1], "symbol": k[2], "product": k[3], "net_qty": v}
        for k, v in sorted(rows.items()) if v != 0
    ]


# ---- the guard's ledger and an alert's legs ---------------------------------------------------------------

def guard_ledger_rows() -> list[tuple]:
    """Every order with a fill or open at the broker, in order, as plain tuples for GuardBook.from_rows:
    (command_id, alert group, strategy, exchange, symbol, product, side, execution_type, quantity, filled_qty,
    status). The alert group is alert_key (alert_id for rows written before alert keys existed)."""
    open_statuses = sorted(T.OPEN_AT_BROKER)
    marks = ", ".join("?" for _ in open_statuses)
    cursor = Order._meta.database.execute_sql(
        "SELECT command_id, CASE WHEN alert_key IS NULL OR alert_key = '' THEN alert_id ELSE alert_key END, "
        "strategy_name, exchange, symbol, product, side, execution_type, quantity, filled_qty, status "
        f"FROM orders WHERE filled_qty > 0 OR status IN ({marks}) ORDER BY id", open_statuses)
    return cursor.fetchall()


def ledger_adjustment_rows() -> list[tuple]:
    """(strategy, exchange, symbol, product, signed quantity) of every ledger write-off, oldest first."""
    return list(LedgerAdjustment.select(LedgerAdjustment.strategy_name, LedgerAdjustment.exchange,
                                        LedgerAdjustment.symbol, LedgerAdjustment.product,
                                        LedgerAdjustment.quantity).order_by(LedgerAdjustment.id).tuples())


def alert_legs(alert_key: str) -> list[dict]:
    """Every order of one processed alert (split children included), in leg order."""
    if not alert_key:
        return []
    query = Order.select().where(Order.alert_key == alert_key).order_by(Order.leg_index, Order.id)
    return [order_dict(r) for r in query]


def created_orders_with_event(detail_prefix: str) -> list[dict]:
    """CREATED orders whose latest event's detail starts with `detail_prefix` (e.g. exit wings held back)."""
    latest = (OrderEvent.select(OrderEvent.command_id, fn.MAX(OrderEvent.id).alias("last"))
              .group_by(OrderEvent.command_id))
    query = (Order.select().join(latest, on=(Order.command_id == latest.c.command_id))
             .join(OrderEvent, on=(OrderEvent.id == latest.c.last))
             .where((Order.status == T.CREATED) & OrderEvent.detail.startswith(detail_prefix))
             .order_by(Order.id))
    return [order_dict(r) for r in query]


def one_legged_alerts(limit: int = 100) -> list[dict]:
    """Multi-leg ENTRY alerts where a leg failed at or after the send while another leg of the same alert went
    out (filled, or still open at the broker): a spread that is not whole."""
    cursor = Order._meta.database.execute_sql(
        "SELECT alert_key FROM orders WHERE execution_type = 'ENTRY' AND status = ? AND alert_key != '' "
        "AND tag NOT LIKE 'VALIDATION_FAILED%' AND tag NOT LIKE 'RISK_BLOCKED%' AND tag NOT LIKE 'GUARD_BLOCKED%' "
        "AND tag NOT LIKE 'DUPLICATE_BLOCKED%' AND tag NOT LIKE '%OTHER_LEG_BLOCKED' GROUP BY alert_key ORDER BY MAX(id) DESC LIMIT ?",
        (T.FAILED, 10 * limit))
    keys = [row[0] for row in cursor.fetchall()]
    out = []
    for key in keys:
        legs = alert_legs(key)
        went = [o for o in legs if o["filled_qty"] > 0 or o["status"] in T.OPEN_AT_BROKER]
        lost = [o for o in legs if o["status"] == T.FAILED and not _blocked_tag(o["tag"])]
        if went and lost:
            out.append({"alert_key": key, "alert_id": legs[0]["alert_id"], "strategy_name": legs[0]["strategy_name"],
                        "went": [_leg_brief(o) for o in went], "failed": [_leg_brief(o) for o in lost]})
        if len(out) >= limit:
            break
    return out


def _blocked_tag(tag: str | None) -> bool:
    return bool(tag) and (tag.startswith(("VALIDATION_FAILED", "RISK_BLOCKED", "GUARD_BLOCKED", "DUPLICATE_BLOCKED"))
                          or tag.endswith("OTHER_LEG_BLOCKED"))


def _leg_brief(o: dict) -> dict:
    return {k: o[k] for k in ("command_id", "symbol", "side", "quantity", "filled_qty", "status", "tag")}
def entry_positions_since(since: str) -> list[dict]:
    """Net position per strategy, exchange, symbol and product from the fills of ENTRY orders created at or after
    `since` (UTC ISO-8601, as created_at): what a risk flatten that started then must leave alone."""
    rows: dict[tuple, int] = {}
    for r in Order.select(Order.strategy_name, Order.exchange, Order.symbol, Order.product, Order.side,
                          fn.SUM(Order.filled_qty)).where(
            (Order.filled_qty > 0) & (Order.execution_type == "ENTRY") & (Order.created_at >= since)).group_by(
            Order.strategy_name, Order.exchange, Order.symbol, Order.product, Order.side).tuples():
        strategy, exch, sym, prd, side, qty = r
        key = (strategy, exch, sym, prd)
        rows[key] = rows.get(key, 0) + (qty if side == "BUY" else -qty)
    return [
        {"strategy_name": k[0], "exchange": k[1], "symbol": k[2], "product": k[3], "net_qty": v}
        for k, v in sorted(rows.items()) if v != 0
    ]


# ---- positions and P&L per strategy (actors/pnl.py replays these) -------------------------------------------

def fill_events() -> list[tuple]:
    """Every order with a fill as ("fill", at, strategy, exchange, symbol, product, side, filled_qty, avg_price),
    `at` = updated_at (when its latest fill was recorded; an order's fills count on the day it last changed)."""
    query = (Order.select(Order.updated_at, Order.strategy_name, Order.exchange, Order.symbol, Order.product,
                          Order.side, Order.filled_qty, Order.avg_price)
             .where(Order.filled_qty > 0).order_by(Order.id))
    return [("fill", *row) for row in query.tuples()]


def write_off_events() -> list[tuple]:
    """Every ledger write-off as ("write_off", at, strategy, exchange, symbol, product, signed quantity)."""
    query = (LedgerAdjustment.select(LedgerAdjustment.at, LedgerAdjustment.strategy_name, LedgerAdjustment.exchange,
                                     LedgerAdjustment.symbol, LedgerAdjustment.product, LedgerAdjustment.quantity)
             .order_by(LedgerAdjustment.id))
    return [("write_off", *row) for row in query.tuples()]


def strategy_day_counts(since: str) -> dict[str, dict[str, int]]:
    """Per strategy: `orders` created at or after `since` (UTC ISO-8601) and `fills`, those of its orders with a
    fill recorded since then."""
    out: dict[str, dict[str, int]] = {}
    for strategy, n in (Order.select(Order.strategy_name, fn.COUNT(Order.id)).where(Order.created_at >= since)
                        .group_by(Order.strategy_name).tuples()):
        out.setdefault(strategy, {"orders": 0, "fills": 0})["orders"] = n
    for strategy, n in (Order.select(Order.strategy_name, fn.COUNT(Order.id))
                        .where((Order.filled_qty > 0) & (Order.updated_at >= since))
                        .group_by(Order.strategy_name).tuples()):
        out.setdefault(strategy, {"orders": 0, "fills": 0})["fills"] = n
    return out


# ---- the dashboard (actors/dashboard/) -----------------------------------------------------------------------

def _order_filters(query, status: str | None, strategy: str | None, symbol: str | None,
                   created_from: str | None, created_to: str | None):
    if status:
        query = query.where(Order.status == status.upper())
    if strategy:
        query = query.where(Order.strategy_name == strategy)
    if symbol:
        query = query.where(Order.symbol == symbol)
    if created_from:
        query = query.where(Order.created_at >= created_from)
    if created_to:
        query = query.where(Order.created_at < created_to)
    return query


def orders_page(status: str | None = None, strategy: str | None = None, symbol: str | None = None,
                created_from: str | None = None, created_to: str | None = None, before_id: int | None = None,
                limit: int = 100) -> list[dict]:
    """Newest first, keyset-paginated on id (the next page: before_id = the last row's id)."""
    query = _order_filters(Order.select(), status, strategy, symbol, created_from, created_to)
    if before_id is not None:
        query = query.where(Order.id < before_id)
    return [order_dict(r) for r in query.order_by(Order.id.desc()).limit(max(1, min(int(limit), 1000)))]


def orders_changed_since(since: str, strategy: str | None = None, symbol: str | None = None,
                         created_from: str | None = None, created_to: str | None = None,
                         limit: int = 500) -> list[dict]:
    """Orders with updated_at > since (status not filtered: a row that leaves the filter must update too)."""
    query = _order_filters(Order.select().where(Order.updated_at > since), None, strategy, symbol, created_from,
                           created_to)
    # Plain dicts: no model object per row (the live poll runs every second per open tab, beside the order path).
    return list(query.order_by(Order.updated_at).limit(limit).dicts())


def filtered_counts_by_status(strategy: str | None = None, symbol: str | None = None,
                              created_from: str | None = None, created_to: str | None = None) -> dict[str, int]:
    counts = {s: 0 for s in T.STATUSES}
    query = _order_filters(Order.select(Order.status, fn.COUNT(Order.id)), None, strategy, symbol, created_from,
                           created_to)
    for status, n in query.group_by(Order.status).tuples():
        counts[status] = n
    return counts


def latest_order_update() -> str:
    return Order.select(fn.MAX(Order.updated_at)).scalar() or ""


def orders_in_doubt(limit: int = 100) -> list[dict]:
    """Orders whose fate at the broker is not known from a broker id: SENT_TO_BROKER without broker_order_id
    (PlaceOrder's outcome unknown) and FAILED LOST_IN_FLIGHT, newest first."""
    query = (Order.select().where(((Order.status == T.SENT_TO_BROKER) & Order.broker_order_id.is_null())
                                  | ((Order.status == T.FAILED) & (Order.tag == "LOST_IN_FLIGHT")))
             .order_by(Order.id.desc()).limit(limit))
    return [order_dict(r) for r in query]


def external_orders(limit: int = 100) -> list[dict]:
    from storage.models import ExternalOrder

    return [dict(r.__data__) for r in ExternalOrder.select().order_by(ExternalOrder.id.desc()).limit(limit)]


def alert_of(alert_key: str) -> dict | None:
    """The audited request (secret redacted) that registered an alert's legs."""
    from storage.models import Alert

    if not alert_key:
        return None
    row = Alert.select().where(Alert.alert_key == alert_key).order_by(Alert.id).first()
    return dict(row.__data__) if row else None


# ---- the service's own reads (actors and runtime never touch the models themselves) -----------------------

_STATUS_SQL = f"SELECT status FROM {Order._meta.table_name} WHERE command_id = ?"


def order_status(command_id: str) -> str | None:
    """The order's status, or None if there is no such order. One constant SELECT of one column: building a
    peewee query for it cost about 0.3 ms per send (the broker's early look before its claim)."""
    rows = Order._meta.database.execute_sql(_STATUS_SQL, (command_id,)).fetchall()  # fetchall: the read ends here
    return rows[0][0] if rows else None


def order_row(command_id: str) -> dict | None:
    """One order's columns (no events), or None."""
    row = Order.get_or_none(Order.command_id == command_id)
    return order_dict(row) if row is not None else None


class OpenOrder(NamedTuple):
    command_id: str
    status: str
    broker_order_id: str | None
    updated_at: str


def open_at_broker() -> list[OpenOrder]:
    """Orders sent and not yet settled (SENT_TO_BROKER, PARTIAL): what the watcher keeps an eye on."""
    query = (Order.select(Order.command_id, Order.status, Order.broker_order_id, Order.updated_at)
             .where(Order.status.in_(sorted(T.OPEN_AT_BROKER))).tuples())
    return [OpenOrder(*r) for r in query]


def created_orders() -> list[dict]:
    """Every CREATED order (never sent), oldest first: what start-up recovery settles."""
    return [order_dict(r) for r in Order.select().where(Order.status == T.CREATED).order_by(Order.id)]


def in_flight_count() -> int:
    """Orders still on their way: CREATED, or SENT_TO_BROKER without a broker id yet (what a stop drains)."""
    return Order.select().where(
        (Order.status == T.CREATED)
        | ((Order.status == T.SENT_TO_BROKER) & Order.broker_order_id.is_null())).count()


def entries_created_since(cutoff: str) -> list[tuple[str, str | None]]:
    """(created_at, tag) of ENTRY orders created at or after `cutoff` that went past registration (not CREATED):
    the risk rate limits are rebuilt from them after a restart."""
    return list(Order.select(Order.created_at, Order.tag)
                .where((Order.execution_type == "ENTRY") & (Order.created_at >= cutoff)
                       & (Order.status != T.CREATED)).tuples())


def entry_instruments(since: str) -> list[tuple[str, str, str, str, str]]:
    """(command_id, exchange, symbol, product, status) of ENTRY orders open, or filled and changed since `since`."""
    return list(Order.select(Order.command_id, Order.exchange, Order.symbol, Order.product, Order.status)
                .where((Order.execution_type == "ENTRY")
                       & (Order.status.in_(sorted(T.NON_TERMINAL))
                          | ((Order.filled_qty > 0) & (Order.updated_at >= since)))).tuples())


def open_orders_brief() -> list[dict]:
    """Every non-terminal order with the columns a flatten plan needs."""
    return list(Order.select(Order.command_id, Order.source, Order.strategy_name, Order.execution_type,
                             Order.exchange, Order.symbol, Order.product, Order.status,
                             Order.broker_order_id, Order.created_at)
                .where(Order.status.in_(sorted(T.NON_TERMINAL))).dicts())


# ---- the freeze split's families (the guard's retried checks) ----------------------------------------------

def children_of(command_id: str, alert_id: str):
    # Children share the parent's alert_id: the alert_id index keeps this from scanning the whole table.
    return Order.select().where((Order.alert_id == alert_id) & (Order.parent_command_id == command_id))


def has_children(command_id: str) -> bool:
    """A read: has this order been split at the freeze quantity?"""
    row = Order.get_or_none(Order.command_id == command_id)
    return row is not None and children_of(command_id, row.alert_id).exists()


def split_family(command_id: str) -> tuple[OrderSnapshot, ...]:
    """A read: the order and its split children that are still CREATED, parent first, then in leg order."""
    parent = Order.get_or_none(Order.command_id == command_id)
    if parent is None:
        return ()
    rows = (Order.select()
            .where((Order.alert_id == parent.alert_id)
                   & ((Order.command_id == command_id) | (Order.parent_command_id == command_id))
                   & (Order.status == T.CREATED))
            .order_by(Order.leg_index, Order.id))
    return tuple(sorted((OrderSnapshot.model_validate(r.__data__) for r in rows), key=lambda o: o.command_id != command_id))
