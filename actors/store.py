"""StoreActor: the only writer of `orders`, `order_events` and `alerts`.

Being one actor (one thread, one mailbox) serializes every status change without locks; each write is a
compare-and-set in SQL as well, so even a second process on the same file could not send an order twice.
`OrderStore` holds the plain logic and is what unit tests call directly.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable

from loguru import logger

from actors.base import SupervisedActor
from actors.notifier import describe_change

from messages.commands import (
    AmendExitLeg,
    AnnounceLegs,
    ClaimSignature,
    FlushBrokerStatuses,
    NoteOrder,
    Notify,
    BrokerOrderReport,
    OrdersRegistered,
    RecordAlert,
    RegisterAlert,
    RegisterResult,
    ReportResult,
    SetBrokerOrderId,
    SplitLeg,
    SplitResult,
    Subscribe,
    TransitionOrder,
    TransitionResult,
    WriteOffPosition,
)
from messages.orders import OrderChanged, OrderSnapshot, new_command_id
from messages.store import Sync
from storage.queries import children_of as _children, has_children, split_family  # noqa: F401 - re-exported
from storage import transitions as T
from storage.models import Alert, ExternalOrder, LedgerAdjustment, Order, OrderEvent, SeenSignature, utc_now


def new_alert_key() -> str:
    """The service's own key of one processed alert (orders.alert_key): unique, whatever the sender's alert_id."""
    return "ak" + uuid.uuid4().hex[:18]


def snapshot(row: Order) -> OrderSnapshot:
    return OrderSnapshot.model_validate(row.__data__, from_attributes=False)


def _order_response(orders: Iterable[OrderSnapshot]) -> list[dict]:
    return [
        {"command_id": o.command_id, "tradingsymbol": o.symbol, "status": o.status, "tag": o.tag}
        for o in orders
    ]


# ---- constant SQL for the hot path ----------------------------------------------------------------------
# Built once from the models (column lists cannot drift from the schema) instead of per call: peewee spent
# most of the store's CPU regenerating the same SQL text for every statement.

ORDER_COLUMNS = tuple(f.column_name for f in Order._meta.sorted_fields)  # "id" first, then the declared order
_ORDER_INSERT_COLUMNS = tuple(c for c in ORDER_COLUMNS if c != "id")
_ORDER_DEFAULTS = {f.column_name: f.default for f in Order._meta.sorted_fields
                   if f.column_name != "id" and not callable(f.default)}
# What a status change or a broker report may change; the compare-and-set writes exactly these.
_ORDER_MUTABLE = ("status", "tag", "broker_order_id", "filled_qty", "avg_price", "broker_status", "broker_status_at",
                  "updated_at")
_EVENT_COLUMNS = ("command_id", "from_status", "to_status", "tag", "detail", "at")
_ALERT_COLUMNS = tuple(f.column_name for f in Alert._meta.sorted_fields if f.column_name != "id")
_EXTERNAL_COLUMNS = tuple(f.column_name for f in ExternalOrder._meta.sorted_fields if f.column_name != "id")


def _q(name: str) -> str:
    return f'"{name}"'


def _insert(table: str, columns: tuple[str, ...], param: str) -> str:
    return (f"INSERT INTO {_q(table)} ({', '.join(map(_q, columns))}) "
            f"VALUES ({', '.join([param] * len(columns))})")


@dataclass(frozen=True)
class _Sql:
    order_by_command_id: str
    order_by_broker_id: str
    order_insert: str
    order_cas: str
    broker_status_update: str
    event_insert: str
    alert_first_accepted: str
    alert_insert: str
    external_update: str
    external_insert: str


@lru_cache(maxsize=None)
def _statements(param: str) -> _Sql:
    orders, p = _q(Order._meta.table_name), param
    select = f"SELECT {', '.join(map(_q, ORDER_COLUMNS))} FROM {orders}"
    alerts, external = _q(Alert._meta.table_name), _q(ExternalOrder._meta.table_name)
    return _Sql(
        order_by_command_id=f'{select} WHERE "command_id" = {p}',
        order_by_broker_id=f'{select} WHERE "broker_order_id" = {p} ORDER BY "id" LIMIT 1',
        order_insert=_insert(Order._meta.table_name, _ORDER_INSERT_COLUMNS, p),
        broker_status_update=(f'UPDATE {orders} SET "broker_status" = {p}, "broker_status_at" = {p} '
                              f'WHERE "command_id" = {p}'),
        order_cas=(f"UPDATE {orders} SET {', '.join(f'{_q(c)} = {p}' for c in _ORDER_MUTABLE)} "
                   f'WHERE "command_id" = {p} AND "status" = {p}'),
        event_insert=_insert(OrderEvent._meta.table_name, _EVENT_COLUMNS, p),
        alert_first_accepted=(f'SELECT "response", "fingerprint" FROM {alerts} WHERE "alert_id" = {p} '
                              f'AND "outcome" = {p} ORDER BY "id"'),
        alert_insert=_insert(Alert._meta.table_name, _ALERT_COLUMNS, p),
        external_update=(f'UPDATE {external} SET "status" = {p}, "filled_qty" = {p}, "last_seen_at" = {p} '
                         f'WHERE "broker_order_id" = {p}'),
        external_insert=_insert(ExternalOrder._meta.table_name, _EXTERNAL_COLUMNS, p),
    )


def _order_snapshot(row: dict) -> OrderSnapshot:
    return OrderSnapshot.model_validate(row)


class OrderStore:
    """Plain write logic over the store's tables. Every write is one transaction.

    The hot path (register, transition, broker id, broker reports) runs constant SQL through the database's
    connection; an order is read as a dict of its columns (ORDER_COLUMNS).
    """

    def __init__(self, db):
        self.db = db
        self.sql = _statements(db.param)
        # command_id -> (broker status, when heard): statuses that changed nothing else, written in batches.
        self.pending_broker_status: dict[str, tuple[str, str]] = {}

    def _rows(self, sql: str, params: tuple) -> list[tuple]:
        # fetchall runs the statement to its end: no half-read SELECT keeps a read snapshot open.
        return self.db.execute_sql(sql, params).fetchall()

    def _order(self, sql: str, key: str) -> dict | None:
        rows = self._rows(sql, (key,))
        return dict(zip(ORDER_COLUMNS, rows[0])) if rows else None

    def get_order(self, command_id: str) -> dict | None:
        """The order's row as a dict of its columns, or None."""
        return self._order(self.sql.order_by_command_id, command_id)

    def _event(self, command_id: str, from_status: str | None, to_status: str, tag: str | None,
               detail: str | None, at: str) -> None:
        self.db.execute_sql(self.sql.event_insert, (command_id, from_status, to_status, tag, detail, at))

    def _alert(self, **values) -> None:
        assert set(values) <= set(_ALERT_COLUMNS), values  # a misspelt column must not become a silent NULL
        self.db.execute_sql(self.sql.alert_insert, tuple(values.get(c) for c in _ALERT_COLUMNS))

    # ---- alerts ---------------------------------------------------------------------------------

    def register_alert(self, msg: RegisterAlert) -> tuple[RegisterResult, list[OrderChanged]]:
        """Insert the alert and its legs in one transaction, under a new alert_key.

        The sender's alert_id only detects retries: the same alert_id with the same content (fingerprint) is
        answered 200 with the first answer and writes no order; with different content it is a new alert (two
        strategies firing on one bar with TradingView's {{timenow}}, an EXIT reusing its ENTRY's id), processed,
        and the reuse is noted on its audit row."""
        now = utc_now()
        with self.db.atomic():
            earlier = self._rows(self.sql.alert_first_accepted, (msg.alert_id, "accepted"))
            # A row without a fingerprint predates them: judged a retry, never a second position.
            retry = next((r for r in earlier if msg.fingerprint is None or r[1] is None or r[1] == msg.fingerprint),
                         None)
            if retry is not None:
                response = retry[0]
                self._alert(alert_id=msg.alert_id, received_at=now, source=msg.source, remote_addr=msg.remote_addr,
                            outcome="duplicate", http_status=200, strategy_name=msg.strategy_name, body=msg.body,
                            response=response, fingerprint=msg.fingerprint)
                return RegisterResult(duplicate=True, http_status=200, response=json.loads(response)), []
            reused = (f"alert_id {msg.alert_id!r} reused with different content ({len(earlier)} earlier alert(s)); "
                      f"processed as a new alert") if earlier else None

            alert_key = new_alert_key()
            rows = []
            for leg in msg.legs:
                row = dict(_ORDER_DEFAULTS)
                row.update(leg.model_dump())
                row.update(created_at=now, updated_at=now, filled_qty=0, broker_order_id=None, avg_price=None,
                           alert_key=alert_key)
                self.db.execute_sql(self.sql.order_insert, tuple(row[c] for c in _ORDER_INSERT_COLUMNS))
                rows.append(row)
            for r in rows:
                self._event(r["command_id"], None, r["status"], r["tag"], "registered", now)
            snapshots = tuple(_order_snapshot(r) for r in rows)
            response = {"alert_id": msg.alert_id, "orders": _order_response(snapshots)}
            self._alert(alert_id=msg.alert_id, received_at=now, source=msg.source, remote_addr=msg.remote_addr,
                        outcome="accepted", http_status=202, strategy_name=msg.strategy_name, body=msg.body,
                        response=json.dumps(response), alert_key=alert_key, fingerprint=msg.fingerprint,
                        error=reused)
        changes = [OrderChanged(order=o, from_status=None, to_status=o.status, tag=o.tag, detail="registered")
                   for o in snapshots]
        return RegisterResult(duplicate=False, http_status=202, response=response, orders=snapshots,
                              note=reused), changes

    def record_alert(self, msg: RecordAlert) -> None:
        with self.db.atomic():
            self._alert(alert_id=msg.alert_id, received_at=utc_now(), source=msg.source, remote_addr=msg.remote_addr,
                        outcome=msg.outcome, http_status=msg.http_status, strategy_name=msg.strategy_name,
                        body=msg.body, error=msg.error)

    # ---- orders ---------------------------------------------------------------------------------

    def _apply(self, row: dict, to_status: str | None, tag: str | None, detail: str | None,
               set_tag: bool = False, **fields) -> OrderChanged | None:
        """Compare-and-set update of one row plus its event; returns None if the row moved meanwhile.

        `row` must have been read inside the current write transaction: the UPDATE writes every mutable column
        from it. On success `row` is updated in place.
        """
        assert set(fields) <= set(_ORDER_MUTABLE), fields
        now = utc_now()
        from_status = row["status"]
        new = dict(row, **fields, updated_at=now)
        if to_status is not None:
            new.update(status=to_status, tag=tag)
        elif set_tag:
            new.update(tag=tag)
        n = self.db.execute_sql(self.sql.order_cas,
                                (*(new[c] for c in _ORDER_MUTABLE), row["command_id"], from_status)).rowcount
        if n != 1:
            return None
        if to_status is not None:
            self._event(row["command_id"], from_status, to_status, tag, detail, now)
        prev_filled, prev_broker_id = row["filled_qty"], row["broker_order_id"]
        row.update(new)
        return OrderChanged(order=_order_snapshot(row), from_status=from_status, to_status=row["status"],
                            prev_filled_qty=prev_filled, prev_broker_order_id=prev_broker_id, tag=row["tag"],
                            detail=detail)

    def transition(self, msg: TransitionOrder) -> tuple[TransitionResult, list[OrderChanged]]:
        with self.db.atomic():
            row = self.get_order(msg.command_id)
            if row is None:
                return TransitionResult(applied=False, reason="UNKNOWN_ORDER"), []
            status = row["status"]
            if msg.expect_from is not None and status not in msg.expect_from:
                return TransitionResult(applied=False, order=_order_snapshot(row), reason=f"STATUS_IS_{status}"), []
            if not T.is_allowed(status, msg.to_status) or (
                status == T.FAILED  # FAILED moves on only through broker-reported fills
            ):
                logger.warning("refused illegal transition {} {} -> {} ({})", msg.command_id, status,
                               msg.to_status, msg.tag)
                return TransitionResult(applied=False, order=_order_snapshot(row), reason="ILLEGAL_TRANSITION"), []
            fields = {"broker_order_id": msg.broker_order_id} if msg.broker_order_id else {}
            change = self._apply(row, msg.to_status, msg.tag, msg.detail, **fields)
        if change is None:
            return TransitionResult(applied=False, reason="CONCURRENT_UPDATE"), []
        return TransitionResult(applied=True, order=change.order), [change]

    def set_broker_order_id(self, msg: SetBrokerOrderId) -> list[OrderChanged]:
        with self.db.atomic():
            row = self.get_order(msg.command_id)
            if row is None or row["broker_order_id"] == msg.broker_order_id:
                return []
            if row["broker_order_id"] and row["broker_order_id"] != msg.broker_order_id:
                logger.error("order {} already has broker id {}; refusing {}", msg.command_id,
                             row["broker_order_id"], msg.broker_order_id)
                return []
            change = self._apply(row, None, None, "broker accepted", broker_order_id=msg.broker_order_id)
        return [change] if change else []

    def amend_exit_leg(self, msg: AmendExitLeg) -> TransitionResult:
        with self.db.atomic():
            row = Order.get_or_none(Order.command_id == msg.command_id)
            if row is not None and _children(row.command_id, row.alert_id).exists():
                # Already split (a retried guard check): its quantity is the first chunk now, never the whole.
                return TransitionResult(applied=False, order=snapshot(row), reason="ALREADY_SPLIT")
            n = (
                Order.update(side=msg.side, quantity=msg.quantity, product=msg.product, updated_at=utc_now())
                .where((Order.command_id == msg.command_id) & (Order.status == T.CREATED))
                .execute()
            )
            row = Order.get_or_none(Order.command_id == msg.command_id)
        return TransitionResult(applied=n == 1, order=snapshot(row) if row else None)

    def note_order(self, msg: NoteOrder) -> bool:
        with self.db.atomic():
            row = self.get_order(msg.command_id)
            if row is None:
                return False
            self._event(msg.command_id, row["status"], row["status"], row["tag"], msg.detail, utc_now())
        return True

    def claim_signature(self, msg: ClaimSignature) -> bool:
        with self.db.atomic():
            SeenSignature.delete().where(SeenSignature.at < msg.forget_before).execute()
            p = self.db.param
            inserted = self.db.execute_sql(f'INSERT OR IGNORE INTO "seen_signatures" ("key", "at") VALUES ({p}, {p})',
                                           (msg.key, utc_now())).rowcount
        return inserted == 1

    def write_off(self, msg: WriteOffPosition) -> None:
        """A ledger correction, and an event on the exit that found it (one transaction)."""
        now = utc_now()
        with self.db.atomic():
            LedgerAdjustment.create(strategy_name=msg.strategy_name, exchange=msg.exchange, symbol=msg.symbol,
                                    product=msg.product, quantity=msg.quantity, reason=msg.reason,
                                    command_id=msg.command_id, at=now)
            row = self.get_order(msg.command_id) if msg.command_id else None
            if row is not None:
                self._event(row["command_id"], row["status"], row["status"], row["tag"],
                            f"ledger written off {msg.quantity:+d}: {msg.reason}", now)

    def split_leg(self, msg: SplitLeg) -> tuple[SplitResult, list[OrderChanged]]:
        """One transaction: the CREATED row keeps quantities[0], the others become CREATED child rows."""
        quantities = tuple(msg.quantities)
        with self.db.atomic():
            row = Order.get_or_none(Order.command_id == msg.command_id)
            if row is None:
                return SplitResult(applied=False, reason="UNKNOWN_ORDER"), []
            if _children(row.command_id, row.alert_id).exists():
                return SplitResult(applied=False, orders=split_family(msg.command_id),
                                   reason="ALREADY_SPLIT"), []
            if row.parent_command_id:
                return SplitResult(applied=False, orders=(snapshot(row),), reason="IS_A_CHILD"), []
            if row.status != T.CREATED:
                return SplitResult(applied=False, orders=(snapshot(row),), reason=f"STATUS_IS_{row.status}"), []
            if len(quantities) < 2 or any(q <= 0 for q in quantities) or sum(quantities) != row.quantity:
                return SplitResult(applied=False, orders=(snapshot(row),), reason="QUANTITIES_DO_NOT_ADD_UP"), []
            now = utc_now()
            n = (Order.update(quantity=quantities[0], updated_at=now)
                 .where((Order.command_id == row.command_id) & (Order.status == T.CREATED)).execute())
            if n != 1:
                return SplitResult(applied=False, reason="CONCURRENT_UPDATE"), []
            previous = row.quantity
            row.quantity, row.updated_at = quantities[0], now
            parent = snapshot(row)
            last_index = (Order.select(Order.leg_index).where(Order.alert_id == row.alert_id)
                          .order_by(Order.leg_index.desc()).scalar()) or 0
            base = {k: v for k, v in row.__data__.items() if k != "id"}
            detail = f"split from {row.command_id}"
            children = []
            for offset, quantity in enumerate(quantities[1:], start=1):
                data = dict(base, command_id=new_command_id(), quantity=quantity, status=T.CREATED, tag=None,
                            broker_order_id=None, filled_qty=0, avg_price=None, created_at=now, updated_at=now,
                            leg_index=last_index + offset, parent_command_id=row.command_id)
                Order.insert(**data).execute()
                OrderEvent.create(command_id=data["command_id"], from_status=None, to_status=T.CREATED, tag=None,
                                  detail=detail, at=now)
                children.append(OrderSnapshot.model_validate(data))
        logger.info("order {} split at the freeze quantity: {} -> {} (children {})", row.command_id, previous,
                    "+".join(str(q) for q in quantities), ", ".join(c.command_id for c in children))
        changes = [OrderChanged(order=parent, from_status=T.CREATED, to_status=T.CREATED,
                                detail=f"split into {'+'.join(str(q) for q in quantities)}")]
        changes += [OrderChanged(order=c, from_status=None, to_status=T.CREATED, detail=detail) for c in children]
        return SplitResult(applied=True, orders=(parent, *children)), changes

    def find_for_report(self, report: BrokerOrderReport) -> dict | None:
        """Our order a broker report is about (by remarks = command_id, else by broker id), as a row dict."""
        if report.remarks:
            row = self._order(self.sql.order_by_command_id, report.remarks)
            if row is not None:
                return row
        if report.broker_order_id:
            return self._order(self.sql.order_by_broker_id, report.broker_order_id)
        return None

    def record_external(self, report: BrokerOrderReport) -> bool:
        """Upsert an order that is not ours. Returns True the first time it is seen."""
        if not report.broker_order_id:
            return False
        now = utc_now()
        status = T.normalise_broker_status(report.status)
        updated = self.db.execute_sql(self.sql.external_update,
                                      (status, report.filled_qty, now, report.broker_order_id)).rowcount
        if updated:
            return False
        values = dict(broker_order_id=report.broker_order_id, remarks=report.remarks, exchange=report.exchange,
                      symbol=report.symbol, side=report.side, quantity=report.quantity, status=status,
                      filled_qty=report.filled_qty, first_seen_at=now, last_seen_at=now)
        self.db.execute_sql(self.sql.external_insert, tuple(values[c] for c in _EXTERNAL_COLUMNS))
        return True

    def _state(self, row: dict) -> T.OrderState:
        """The order as the store knows it: its row, with a broker status not yet written (see
        `pending_broker_status`) taken as recorded."""
        pending = self.pending_broker_status.get(row["command_id"])
        return T.OrderState(status=row["status"], filled_qty=row["filled_qty"], avg_price=row["avg_price"],
                            broker_order_id=row["broker_order_id"], tag=row["tag"],
                            broker_status=pending[0] if pending else row["broker_status"])

    def flush_broker_statuses(self) -> int:
        """Write the broker statuses that arrived without any other news (PENDING -> OPEN ...) in one
        transaction. They only tell `oms verify` that the broker confirmed the order, which can wait a moment;
        a write per status would cost the hot path a commit per push. Returns how many rows changed."""
        if not self.pending_broker_status:
            return 0
        pending, self.pending_broker_status = self.pending_broker_status, {}
        written = 0
        with self.db.atomic():
            for command_id, (status, at) in pending.items():
                row = self.get_order(command_id)
                if row is None or T.next_broker_status(self._state(row), status) is None:
                    continue  # a later write already recorded it, or something newer
                written += self.db.execute_sql(self.sql.broker_status_update, (status, at, command_id)).rowcount
        return written

    def apply_broker_report(self, report: BrokerOrderReport) -> tuple[ReportResult, list[OrderChanged]]:
        view = T.BrokerView(status=T.normalise_broker_status(report.status), filled_qty=report.filled_qty,
                            avg_price=report.avg_price, broker_order_id=report.broker_order_id,
                            reason=report.reason)
        # Most reports (NewAck, PendingNew, New) change nothing: decide that on a plain read, without the write
        # lock. A no-op judged on a committed row is the report applied at that moment; whatever anyone
        # writes later comes after it, and plan_broker_update is idempotent and monotonic.
        row = self.find_for_report(report)
        if row is not None:
            state = self._state(row)
            if T.plan_broker_update(state, view) is None:
                status = T.next_broker_status(state, view.status)
                if status is not None:  # only the broker's own status is new: written with the next batch
                    self.pending_broker_status[row["command_id"]] = (status, utc_now())
                return ReportResult(matched=True, command_id=row["command_id"]), []
        with self.db.atomic():
            # Read again under the write lock: the plan must be made on the row the UPDATE overwrites.
            row = self.find_for_report(report)
            if row is None:
                return ReportResult(matched=False, external=self.record_external(report)), []
            current = self._state(row)
            plan = T.plan_broker_update(current, view)
            broker_status = T.next_broker_status(current, view.status)
            if plan is None and broker_status is None:
                return ReportResult(matched=True, command_id=row["command_id"]), []
            changes = []
            if row["status"] == T.CREATED:
                # The broker has an order we never marked sent (only possible if something else sent it):
                # record SENT_TO_BROKER first so it can never be sent again.
                logger.error("broker report for CREATED order {}; recording SENT_TO_BROKER", row["command_id"])
                adopted = self._apply(row, T.SENT_TO_BROKER, None, "adopted from broker report")
                if adopted is None:
                    return ReportResult(matched=True, command_id=row["command_id"]), []
                changes.append(adopted)
            detail = f"broker {view.status} via {report.origin}"
            # Every write a broker report makes records the broker's own status with it (a new one, or the one
            # we had when only fills or ids moved), and when the broker last told us something new.
            seen = dict(broker_status=broker_status or current.broker_status, broker_status_at=utc_now())
            self.pending_broker_status.pop(row["command_id"], None)  # written now, with this change
            if plan is None:  # only the broker's status is new (e.g. PENDING -> OPEN): no transition
                change = self._apply(row, None, None, detail, **seen)
            else:
                change = self._apply(row, plan.to_status, plan.tag, detail, set_tag=plan.to_status is None,
                                     filled_qty=plan.filled_qty, avg_price=plan.avg_price,
                                     broker_order_id=plan.broker_order_id, **seen)
            if change is not None:
                changes.append(change)
        return ReportResult(matched=True, command_id=row["command_id"], changed=bool(changes)), changes


class StoreActor(SupervisedActor):
    """Thin actor over OrderStore: applies writes in mailbox order and publishes OrderChanged.

    It is also the one way into the pipeline: once an alert's legs are committed (whoever registered them: the
    listener, the dashboard, the risk flatten, the guard's one-legged exit) or recovery hands back legs of an
    earlier run (AnnounceLegs), the CREATED legs are announced to `pipeline` (RiskActor, the first blocker)."""

    registry_name = "store"
    HANDLERS = {
        Sync: "_on_sync",
        RegisterAlert: "_on_register",
        AnnounceLegs: "_on_announce",
        FlushBrokerStatuses: "_on_flush_broker_statuses",
        TransitionOrder: "_on_transition",
        BrokerOrderReport: "_on_report",
        SetBrokerOrderId: "_on_set_broker_order_id",
        AmendExitLeg: "_on_amend_exit_leg",
        NoteOrder: "_on_note_order",
        ClaimSignature: "_on_claim_signature",
        WriteOffPosition: "_on_write_off",
        SplitLeg: "_on_split",
        RecordAlert: "_on_record_alert",
        Subscribe: "_on_subscribe",
    }

    def __init__(self, db, registry, subscribers: tuple[str, ...] = (), pipeline: str | None = "risk"):
        super().__init__(registry)
        self.store = OrderStore(db)
        self.subscribers: list[str] = list(subscribers)
        self.pipeline = pipeline
        self.flush_due = False  # a FlushBrokerStatuses is in the mailbox

    def on_stop(self):
        self.store.flush_broker_statuses()

    def _on_sync(self, message: Sync) -> bool:
        self.store.flush_broker_statuses()
        return True  # answered once every earlier message has been applied

    def _on_register(self, message: RegisterAlert) -> RegisterResult:
        result, changes = self.store.register_alert(message)
        self._log_alert(message, result)
        self._publish(changes)
        if not result.duplicate and message.announce:
            self._announce(tuple(o for o in result.orders if o.status == T.CREATED))
        return result

    def _on_announce(self, message: AnnounceLegs) -> None:
        self._announce(message.orders)

    def _on_flush_broker_statuses(self, message: FlushBrokerStatuses) -> None:
        self.flush_due = False
        self.store.flush_broker_statuses()

    def _on_transition(self, message: TransitionOrder) -> TransitionResult:
        result, changes = self.store.transition(message)
        self._publish(changes)
        return result

    def _on_report(self, message: BrokerOrderReport) -> ReportResult:
        result, changes = self.store.apply_broker_report(message)
        self._publish(changes)
        if self.store.pending_broker_status and not self.flush_due:
            self.flush_due = True
            self.actor_ref.tell(FlushBrokerStatuses())
        if result.external:
            self._external(message)
        return result

    def _on_set_broker_order_id(self, message: SetBrokerOrderId) -> None:
        self._publish(self.store.set_broker_order_id(message))

    def _on_amend_exit_leg(self, message: AmendExitLeg) -> TransitionResult:
        return self.store.amend_exit_leg(message)

    def _on_note_order(self, message: NoteOrder) -> bool:
        return self.store.note_order(message)

    def _on_claim_signature(self, message: ClaimSignature) -> bool:
        return self.store.claim_signature(message)

    def _on_write_off(self, message: WriteOffPosition) -> None:
        self.store.write_off(message)
        logger.bind(event="ledger_write_off", strategy=message.strategy_name, symbol=message.symbol,
                    quantity=message.quantity).warning(
            "ledger of {} {} {} {} written off {:+d}: {}", message.strategy_name, message.exchange,
            message.symbol, message.product, message.quantity, message.reason)

    def _on_split(self, message: SplitLeg) -> SplitResult:
        result, changes = self.store.split_leg(message)
        self._publish(changes)
        return result

    def _on_record_alert(self, message: RecordAlert) -> None:
        self.store.record_alert(message)
        logger.bind(event="alert", alert_id=message.alert_id, outcome=message.outcome,
                    http_status=message.http_status, strategy=message.strategy_name, error=message.error,
                    remote_addr=message.remote_addr).info(
            "alert {} {} ({})", message.alert_id or "-", message.outcome, message.error or "")

    def _on_subscribe(self, message: Subscribe) -> None:
        if message.name not in self.subscribers:
            self.subscribers.append(message.name)

    def _announce(self, orders: tuple[OrderSnapshot, ...]) -> None:
        if orders and self.pipeline is not None:
            self.registry.tell(self.pipeline, OrdersRegistered(orders=orders))

    def _external(self, report: BrokerOrderReport) -> None:
        logger.bind(event="external_order", broker_order_id=report.broker_order_id, symbol=report.symbol).warning(
            "external order {} at the broker ({} {} {} remarks={!r}): recorded, not adopted",
            report.broker_order_id, report.side, report.quantity, report.symbol, report.remarks)
        self.registry.tell("notifier", Notify(
            kind="external", text=f"External order at the broker, not placed by this service: "
                                  f"{report.side} {report.quantity} {report.symbol} (id {report.broker_order_id})"))

    def _log_alert(self, msg: RegisterAlert, result: RegisterResult) -> None:
        outcome = "duplicate" if result.duplicate else "accepted"
        logger.bind(event="alert", alert_id=msg.alert_id, outcome=outcome, http_status=result.http_status,
                    strategy=msg.strategy_name, legs=len(msg.legs), received_mono=msg.received_mono).info(
            "alert {} {} ({} legs)", msg.alert_id, outcome, len(msg.legs))

    def _publish(self, changes: list[OrderChanged]) -> None:
        for change in changes:
            o = change.order
            logger.bind(event="order", command_id=o.command_id, alert_id=o.alert_id, strategy=o.strategy_name,
                        symbol=o.symbol, from_status=change.from_status, to_status=change.to_status,
                        tag=change.tag, filled_qty=o.filled_qty, avg_price=o.avg_price,
                        broker_order_id=o.broker_order_id).info(
                "order {} {}{}{}", o.command_id,
                f"{change.from_status or '-'} -> {change.to_status}" if change.from_status != change.to_status
                else f"{change.to_status} updated", f" [{change.tag}]" if change.tag else "",
                f" broker_id={o.broker_order_id} filled={o.filled_qty}" if o.broker_order_id else "")
            notable = None
            for name in self.subscribers:
                if name == "notifier":
                    # The notifier only turns changes into messages; most changes (acks, broker ids) make
                    # none, so it is not woken for them.
                    notable = describe_change(change) is not None if notable is None else notable
                    if not notable:
                        continue
                self.registry.tell(name, change)
