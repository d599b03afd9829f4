"""Reads that compare a broker OrderBook with the database (the watcher's reconciliation). Constant SQL text:
at a 100 000-row book, building the same queries with peewee costs more than running them."""

from __future__ import annotations

from storage import transitions as T
from storage.models import ExternalOrder, Order

# Ids per `IN (...)` when comparing the book with the database (well under SQLite's variable limit).
COMPARE_CHUNK = 500
SETTLED = "settled"  # states_by_remarks: ours, and nothing to change

_ORDERS, _EXTERNAL = Order._meta.table_name, ExternalOrder._meta.table_name
_STATE_COLUMNS = "o.status, o.filled_qty, o.avg_price, o.broker_order_id, o.tag, o.broker_status"
# Book rows matched by remarks = command_id, minus those already settled: an EXECUTED order with its broker
# id, its price and at least the row's fills (EXECUTED is terminal: nothing else could still be written; the
# same shortcut as the watcher's `report_changes`). Rows that match no command_id come back with a NULL status.
_BY_REMARKS_SQL = ("WITH book(i, cid, filled) AS (VALUES {marks}) SELECT book.i, " + _STATE_COLUMNS
                   + " FROM book LEFT JOIN " + _ORDERS + " o ON o.command_id = book.cid"
                   " WHERE o.command_id IS NULL OR NOT (o.status = 'EXECUTED' AND o.broker_order_id IS NOT NULL"
                   " AND o.broker_order_id <> '' AND o.avg_price IS NOT NULL AND o.filled_qty >= book.filled)")
_BY_BROKER_ID_SQL = ("SELECT o.broker_order_id, " + _STATE_COLUMNS + " FROM " + _ORDERS
                     + " o WHERE o.broker_order_id IN ({marks})")
_EXTERNAL_SQL = "SELECT broker_order_id, status, filled_qty FROM " + _EXTERNAL + " WHERE broker_order_id IN ({marks})"


def _chunks(items: list, size: int = COMPARE_CHUNK):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _run(sql: str, params: list) -> list[tuple]:
    return Order._meta.database.execute_sql(sql, params).fetchall()


def _marks(count: int, width: int = 1) -> str:
    one = "(" + ",".join("?" * width) + ")" if width > 1 else "?"
    return ",".join([one] * count)


def states_by_remarks(keys: list[tuple[str, int]]) -> list:
    """For each (remarks, filled) of a book row: SETTLED, our OrderState, or None when its remarks are no
    command_id."""
    out: list = [SETTLED] * len(keys)
    size = COMPARE_CHUNK // 3 * 3
    for base in range(0, len(keys), size):
        chunk = keys[base:base + size]
        params = []
        for i, (remarks, filled) in enumerate(chunk, start=base):
            params += (i, remarks, filled)
        for i, status, filled, avg, broker_id, tag, bstatus in _run(
                _BY_REMARKS_SQL.format(marks=_marks(len(chunk), 3)), params):
            out[i] = None if status is None else T.OrderState(status, filled, avg, broker_id, tag, bstatus)
    return out


def states_by_broker_id(broker_ids: list[str]) -> dict[str, T.OrderState]:
    out: dict[str, T.OrderState] = {}
    for chunk in _chunks(broker_ids):
        for bid, status, filled, avg, broker_id, tag, bstatus in _run(
                _BY_BROKER_ID_SQL.format(marks=_marks(len(chunk))), chunk):
            out.setdefault(bid, T.OrderState(status, filled, avg, broker_id, tag, bstatus))
    return out


def external_states(broker_ids: list[str]) -> dict[str, tuple[str, int]]:
    """Recorded external orders: broker id -> (status, filled_qty)."""
    out = {}
    for chunk in _chunks(broker_ids):
        for bid, status, filled in _run(_EXTERNAL_SQL.format(marks=_marks(len(chunk))), chunk):
            out[bid] = (status, filled)
    return out
