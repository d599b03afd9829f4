"""Messages between actors. Every one is a frozen pydantic model; actors dispatch on the type."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from messages.orders import NewOrder, OrderSnapshot


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


# ---- StoreActor: the only writer ------------------------------------------------------------------

class RegisterAlert(_Frozen):
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


class RegisterResult(_Frozen):
    duplicate: bool
    http_status: int
    response: dict[str, Any]
    orders: tuple[OrderSnapshot, ...] = ()
    note: str | None = None  # e.g. the alert_id was reused with different content


class RecordAlert(_Frozen):
    """Audit a request that did not register orders (400/401/413/503)."""

    alert_id: str | None = None
    source: str = "webhook"
    remote_addr: str | None = None
    strategy_name: str | None = None
    outcome: str
    http_status: int
    body: str | None = None
    error: str | None = None


class TransitionOrder(_Frozen):
    """Compare-and-set: apply `to_status` only if the current status is in `expect_from` (any legal if None)."""

    command_id: str
    to_status: str
    expect_from: tuple[str, ...] | None = None
    tag: str | None = None
    detail: str | None = None
    broker_order_id: str | None = None


class SetBrokerOrderId(_Frozen):
    command_id: str
    broker_order_id: str


class AmendExitLeg(_Frozen):
    """The guard resolved an EXIT leg against the held position (only while CREATED)."""

    command_id: str
    side: str
    quantity: int
    product: str


class SplitLeg(_Frozen):
    """Guard -> Store (ask): split a CREATED leg above the freeze quantity into child orders, in one transaction.

    The row keeps `quantities[0]`; every further quantity becomes a new CREATED row (new command_id, same
    alert and order fields, `parent_command_id` = this command_id). `sum(quantities)` must equal the row's
    quantity, so a repeated or stale request is refused instead of applied twice."""

    command_id: str
    quantities: tuple[int, ...]


class SplitResult(_Frozen):
    """applied: the parent (first) and its new children. ALREADY_SPLIT: not applied, and `orders` holds the
    parent and its children that are still CREATED (a retried check picks up where the first stopped)."""

    applied: bool
    orders: tuple[OrderSnapshot, ...] = ()
    reason: str | None = None


class TransitionResult(_Frozen):
    applied: bool
    order: OrderSnapshot | None = None
    reason: str | None = None


class BrokerOrderReport(_Frozen):
    """What the broker says about one order, from a WebSocket push or an OrderBook row."""

    remarks: str | None
    broker_order_id: str | None
    status: str
    filled_qty: int = 0
    avg_price: float | None = None
    reason: str | None = None
    exchange: str | None = None
    symbol: str | None = None
    side: str | None = None
    quantity: int | None = None
    origin: str = "ws"  # ws | poll | inject


class ReportResult(_Frozen):
    matched: bool
    command_id: str | None = None
    changed: bool = False
    external: bool = False  # first sighting of an order that is not ours


class Subscribe(_Frozen):
    """Register an actor (by registry name) for OrderChanged publications."""

    name: str


# ---- The pipeline ---------------------------------------------------------------------------------

class OrdersRegistered(_Frozen):
    """Ingress -> Risk: the legs of one alert, durably CREATED, to pass the blockers together."""

    orders: tuple[OrderSnapshot, ...]


class RiskCleared(_Frozen):
    """Risk -> Guard: legs that passed the risk blocker."""

    orders: tuple[OrderSnapshot, ...]


class SendLegs(_Frozen):
    """Guard -> Broker: legs of one alert that passed every blocker, to be sent in this order.

    together: the ENTRY legs of a spread. Every leg is priced before any is claimed; if one cannot be priced,
    claimed or placed, the legs not yet sent are held (FAILED `SEND_FAILED:OTHER_LEG_BLOCKED`), so a spread never
    goes out one-legged through a fault of ours. Otherwise (exits) each leg goes on its own."""

    orders: tuple[OrderSnapshot, ...]
    together: bool = False


class ClaimSignature(_Frozen):
    """Ingress -> Store (ask): remember a webhook signature; True the first time, False when it was seen before
    (a replay). `forget_before`: rows older than this (UTC ISO) are pruned."""

    key: str
    forget_before: str


class FlushBrokerStatuses(_Frozen):
    """Store -> itself: write the broker statuses held back (queued behind the messages waiting now, so one
    transaction covers everything that arrived meanwhile)."""


class AnnounceLegs(_Frozen):
    """-> Store: send these CREATED legs down the pipeline (start-up recovery: legs registered before a restart
    that are still young enough). The store is the one place that announces registered legs to the blockers."""

    orders: tuple[OrderSnapshot, ...]


class NoteOrder(_Frozen):
    """-> Store: an event on an order that changes no field (e.g. an EXIT wing held until its buy-backs fill)."""

    command_id: str
    detail: str


class WriteOffPosition(_Frozen):
    """Guard -> Store: the broker holds less of a strategy's position than its ledger (squared off outside the
    service): record the correction (ledger_adjustments) and an event on the exit that found it."""

    strategy_name: str
    exchange: str
    symbol: str
    product: str
    quantity: int  # signed, added to the strategy's net quantity (toward zero)
    reason: str
    command_id: str | None = None


class InstrumentQuery(_Frozen):
    """-> Broker (ask): what the broker knows of an instrument (SearchScrip, cached for the trading day)."""

    exchange: str
    symbol: str


class InstrumentInfo(_Frozen):
    exchange: str
    symbol: str
    kind: str  # option | future | equity
    found: bool
    token: str | None = None
    lot_size: int | None = None
    tick_size: float | None = None


class CancelOrder(_Frozen):
    """-> Broker: cancel one of our orders at the broker (an EXIT superseding a resting entry, a risk breach)."""

    command_id: str
    reason: str


class Notify(_Frozen):
    kind: str  # alert | blocked | placed | filled | rejected | service | risk | external | supervisor
    text: str
    command_id: str | None = None


class Tick(_Frozen):
    """A timer tick delivered to an actor's own mailbox."""

    name: str = "tick"


class Halt(_Frozen):
    reason: str = "MANUAL"


class Resume(_Frozen):
    pass


class GetState(_Frozen):
    pass


class PositionsSnapshot(_Frozen):
    """Watcher -> Risk/Guard: the broker's PositionBook rows, as plain dicts of typed values."""

    rows: tuple[dict[str, Any], ...]
    ok: bool = True


class BrokerOrderNotFound(_Frozen):
    """-> Watcher: the broker answered that it does not know one of our accepted orders (CancelOrder or
    ModifyOrder `Order not found`, SingleOrdHist `no data`). Only a suspicion: the watcher confirms it with later
    reads before the order ends FAILED BROKER_UNKNOWN_ORDER."""

    command_id: str
    broker_order_id: str
    route: str  # the call that was answered: CancelOrder | ModifyOrder | SingleOrdHist
    emsg: str | None = None
