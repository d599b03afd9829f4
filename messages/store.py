"""Messages to StoreActor, the only writer of orders, order_events and alerts, and its answers."""

from __future__ import annotations

from typing import Any

from messages.base import Frozen
from messages.orders import NewOrder, OrderSnapshot


class RegisterAlert(Frozen):
    """Insert the alert row and every leg in one transaction (ask: the caller waits for the commit)."""

    alert_id: str
    source: str
    remote_addr: str | None = None
    strategy_name: str | None = None
    body: str | None = None  # secret already redacted
    legs: tuple[NewOrder, ...]
    received_mono: float | None = None  # time.monotonic() when the listener got the request (oms bench)
    # sha256 of the alert's normalised content. With it, the same alert_id is a retry (200, the first answer)
    # only when an earlier alert with this alert_id had the same fingerprint; otherwise a new alert. None: no
    # retry detection (the service's own alerts, whose alert_ids are unique).
    fingerprint: str | None = None
    # False: commit only; the legs are not announced to the blockers (tests that drive one actor by hand).
    announce: bool = True


class RegisterResult(Frozen):
    duplicate: bool
    http_status: int
    response: dict[str, Any]
    orders: tuple[OrderSnapshot, ...] = ()
    note: str | None = None  # e.g. the alert_id was reused with different content


class RecordAlert(Frozen):
    """Audit a request that did not register orders (400/401/413/503)."""

    alert_id: str | None = None
    source: str = "webhook"
    remote_addr: str | None = None
    strategy_name: str | None = None
    outcome: str
    http_status: int
    body: str | None = None
    error: str | None = None


class TransitionOrder(Frozen):
    """Compare-and-set: apply `to_status` only if the current status is in `expect_from` (any legal if None)."""

    command_id: str
    to_status: str
    expect_from: tuple[str, ...] | None = None
    tag: str | None = None
    detail: str | None = None
    broker_order_id: str | None = None


class TransitionResult(Frozen):
    applied: bool
    order: OrderSnapshot | None = None
    reason: str | None = None


class SetBrokerOrderId(Frozen):
    command_id: str
    broker_order_id: str


class AmendExitLeg(Frozen):
    """The guard resolved an EXIT leg against the held position (only while CREATED)."""

    command_id: str
    side: str
    quantity: int
    product: str


class SplitLeg(Frozen):
    """Guard -> Store (ask): split a CREATED leg above the freeze quantity into child orders, in one transaction.

    The row keeps `quantities[0]`; every further quantity becomes a new CREATED row (new command_id, same
    alert and order fields, `parent_command_id` = this command_id). `sum(quantities)` must equal the row's
    quantity, so a repeated or stale request is refused instead of applied twice."""

    command_id: str
    quantities: tuple[int, ...]


class SplitResult(Frozen):
    """applied: the parent (first) and its new children. ALREADY_SPLIT: not applied, and `orders` holds the
    parent and its children that are still CREATED (a retried check picks up where the first stopped)."""

    applied: bool
    orders: tuple[OrderSnapshot, ...] = ()
    reason: str | None = None


class ReportResult(Frozen):
    matched: bool
    command_id: str | None = None
    changed: bool = False
    external: bool = False  # first sighting of an order that is not ours


class Subscribe(Frozen):
    """Register an actor (by registry name) for OrderChanged publications."""

    name: str


class ClaimSignature(Frozen):
    """Ingress -> Store (ask): remember a webhook signature; True the first time, False when it was seen before
    (a replay). `forget_before`: rows older than this (UTC ISO) are pruned."""

    key: str
    forget_before: str


class NoteOrder(Frozen):
    """-> Store: an event on an order that changes no field (e.g. an EXIT wing held until its buy-backs fill)."""

    command_id: str
    detail: str


class WriteOffPosition(Frozen):
    """Guard -> Store: the broker holds less of a strategy's position than its ledger (squared off outside the
    service): record the correction (ledger_adjustments) and an event on the exit that found it."""

    strategy_name: str
    exchange: str
    symbol: str
    product: str
    quantity: int  # signed, added to the strategy's net quantity (toward zero)
    reason: str
    command_id: str | None = None


class FlushBrokerStatuses(Frozen):
    """Store -> itself: write the broker statuses held back (queued behind the messages waiting now, so one
    transaction covers everything that arrived meanwhile)."""


class AnnounceLegs(Frozen):
    """-> Store: send these CREATED legs down the pipeline (start-up recovery: legs registered before a restart
    that are still young enough). The store is the one place that announces registered legs to the blockers."""

    orders: tuple[OrderSnapshot, ...]


class Sync(Frozen):
    """-> Store (ask): answered True once every message told to the store before it has been applied."""
