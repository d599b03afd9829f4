"""The order status table of shared/DESIGN.md and the pure rules for applying broker reports.

No I/O here: StoreActor asks these functions what to do and then does it in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

CREATED = "CREATED"
SENT_TO_BROKER = "SENT_TO_BROKER"
PARTIAL = "PARTIAL"
EXECUTED = "EXECUTED"
FAILED = "FAILED"

STATUSES = (CREATED, SENT_TO_BROKER, PARTIAL, EXECUTED, FAILED)
NON_TERMINAL = frozenset({CREATED, SENT_TO_BROKER, PARTIAL})
# Orders that may still produce fills at the broker (duplicate blocker, in-flight set).
OPEN_AT_BROKER = frozenset({SENT_TO_BROKER, PARTIAL})

ALLOWED: dict[str, frozenset[str]] = {
    CREATED: frozenset({SENT_TO_BROKER, FAILED}),
    SENT_TO_BROKER: frozenset({PARTIAL, EXECUTED, FAILED}),
    PARTIAL: frozenset({PARTIAL, EXECUTED, FAILED}),
    # Only on broker-reported fills: broker truth wins over our own FAILED verdict.
    FAILED: frozenset({PARTIAL, EXECUTED}),
    EXECUTED: frozenset(),
}


def is_allowed(from_status: str, to_status: str) -> bool:
    return to_status in ALLOWED.get(from_status, frozenset())


# Broker status spellings seen across NorenOMS deployments, normalised.
_BROKER_STATUS_ALIASES = {
    "CANCELLED": "CANCELED",
    "REJECT": "REJECTED",
    "COMPLETED": "COMPLETE",
    "TRIGGER PENDING": "TRIGGER_PENDING",
}


def normalise_broker_status(raw: str | None) -> str:
    status = (raw or "").strip().upper().replace("-", "_")
    return _BROKER_STATUS_ALIASES.get(status, status)


_BROKER_FAILURE_TAGS = {"CANCELED": "BROKER_CANCELED", "EXPIRED": "BROKER_EXPIRED"}
_BROKER_WORKING = frozenset({"OPEN", "PENDING", "TRIGGER_PENDING", "NEW", "AMO_RECEIVED", "MODIFIED", "REPLACED"})


@dataclass(frozen=True)
class OrderState:
    status: str
    filled_qty: int
    avg_price: float | None
    broker_order_id: str | None
    tag: str | None = None
    broker_status: str | None = None  # orders.broker_status: the broker's own word, normalised


@dataclass(frozen=True)
class BrokerView:
    """What the broker says about one order (from a WS push or an OrderBook row)."""

    status: str  # normalised
    filled_qty: int
    avg_price: float | None
    broker_order_id: str | None
    reason: str | None = None  # rejreason


@dataclass(frozen=True)
class Plan:
    """What to write: a status transition (to_status set) and/or plain field updates (fills, broker id, tag)."""

    to_status: str | None
    tag: str | None
    filled_qty: int
    avg_price: float | None
    broker_order_id: str | None

    def changes(self, current: OrderState) -> bool:
        return (
            self.to_status is not None
            or self.filled_qty != current.filled_qty
            or self.avg_price != current.avg_price
            or self.broker_order_id != current.broker_order_id
            or self.tag != current.tag
        )


def _clean_reason(reason: str | None) -> str:
    return " ".join((reason or "").split())


def broker_target(view: BrokerView, filled: int) -> tuple[str | None, str | None]:
    """The status (and tag) the broker's word implies for an order with `filled` units filled."""
    status = view.status
    if status == "COMPLETE":
        return EXECUTED, None
    if status == "REJECTED":
        return FAILED, f"BROKER_REJECTED:{_clean_reason(view.reason) or 'UNKNOWN'}"
    if status in _BROKER_FAILURE_TAGS:
        tag = _BROKER_FAILURE_TAGS[status]
        if status == "CANCELED" and _clean_reason(view.reason):
            tag = f"{tag}:{_clean_reason(view.reason)}"
        return FAILED, tag
    if status in _BROKER_WORKING or status == "":
        return (PARTIAL if filled > 0 else None), None
    return None, None  # a status we do not know: keep fills, change nothing else


def plan_broker_update(current: OrderState, view: BrokerView) -> Plan | None:
    """Decide how a broker report changes an order. Idempotent and monotonic.

    The same report twice, or reports out of order, never move an order backwards or reduce filled_qty.
    A CREATED order is judged as if it were SENT_TO_BROKER (the store records that step first).
    Returns None when nothing changes.
    """
    filled = max(current.filled_qty, view.filled_qty)
    grew = filled > current.filled_qty
    avg = view.avg_price if (grew or current.avg_price is None) and view.avg_price else current.avg_price
    broker_id = current.broker_order_id or view.broker_order_id
    target, tag = broker_target(view, filled)
    effective = SENT_TO_BROKER if current.status == CREATED else current.status

    if effective == EXECUTED:
        target, tag = None, current.tag
    elif effective == FAILED:
        # FAILED moves on only through broker-reported fills; a dead order with new fills stays FAILED,
        # but takes the fills and the broker's reason (broker truth wins).
        if target == EXECUTED or (target == PARTIAL and grew):
            tag = None
        elif target == FAILED:
            target = None  # FAILED -> FAILED is no transition; the broker's reason replaces ours
        else:
            target, tag = None, current.tag
    elif target == PARTIAL and effective == PARTIAL and not grew:
        target, tag = None, current.tag
    elif target is not None and not is_allowed(effective, target):
        target, tag = None, current.tag
    elif target is None:
        tag = current.tag

    plan = Plan(to_status=target, tag=tag, filled_qty=filled, avg_price=avg, broker_order_id=broker_id)
    return plan if plan.changes(current) else None


# The broker's own status only moves forward: PENDING (received, not yet at the exchange) < working < final.
# A report read before a later one but applied after it (an OrderBook row after a COMPLETE push) must not
# put an order back to OPEN.
_BROKER_FINAL = frozenset({"COMPLETE", "REJECTED", "CANCELED", "EXPIRED"})


def _broker_rank(status: str) -> int:
    if status in _BROKER_FINAL:
        return 2
    return 0 if status == "PENDING" else 1


def next_broker_status(current: OrderState, reported: str) -> str | None:
    """The broker_status to record for a (normalised) reported status, or None when it tells nothing new.

    Within working statuses the latest report wins (an SL order goes TRIGGER_PENDING -> OPEN); a final status
    is never replaced. An EXECUTED order takes nothing: it became EXECUTED on a COMPLETE report, recorded in the
    same write (rows older than this column keep NULL; the watcher's EXECUTED shortcut relies on this).
    """
    if not reported or reported == current.broker_status or current.status == EXECUTED:
        return None
    if current.broker_status is not None:
        if current.broker_status in _BROKER_FINAL or _broker_rank(reported) < _broker_rank(current.broker_status):
            return None
    return reported


def report_changes_order(current: OrderState, view: BrokerView) -> bool:
    """Would this broker report change anything on the order (status, fills, ids, tag or broker_status)?"""
    return plan_broker_update(current, view) is not None or next_broker_status(current, view.status) is not None
