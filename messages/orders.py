"""Order payloads: what is inserted, what is read back, and what StoreActor publishes."""

from __future__ import annotations

import uuid

from messages.base import Frozen

# The exchanges an order may go to (NorenOMS exch codes).
EXCHANGES = frozenset({"NSE", "NFO", "BSE", "BFO", "MCX", "CDS"})


def new_command_id() -> str:
    """An order's id: 20 characters, globally unique; travels to the broker as `remarks`."""
    return "oms" + uuid.uuid4().hex[:17]


class OrderFields(Frozen):
    """What an order is, as the trader's intent: common to a leg being registered and a row read back."""

    command_id: str
    alert_id: str
    client_id: str
    # The service's own key of the processed alert (StoreActor assigns it at registration): the legs of one
    # alert share it, a reused alert_id never does.
    alert_key: str = ""
    source: str
    strategy_name: str
    execution_type: str
    exchange: str
    symbol: str
    side: str
    quantity: int
    product: str
    order_type: str
    price: float = 0.0
    trigger_price: float | None = None
    leg_index: int = 0
    parent_command_id: str | None = None


class NewOrder(OrderFields):
    """One leg to register. status is CREATED, or FAILED with a VALIDATION_FAILED tag."""

    status: str = "CREATED"
    tag: str | None = None


class OrderSnapshot(OrderFields):
    """An `orders` row as read back after a write (JSON field names = column names)."""

    status: str
    tag: str | None
    broker_order_id: str | None
    filled_qty: int
    avg_price: float | None
    broker_status: str | None = None  # the broker's own status (normalised); None until the broker confirms it
    broker_status_at: str | None = None
    created_at: str
    updated_at: str


class OrderChanged(Frozen):
    """Published by StoreActor after every committed change of an order.

    from_status == to_status when only fields changed (e.g. broker_order_id stored).
    """

    order: OrderSnapshot
    from_status: str | None
    to_status: str
    prev_filled_qty: int = 0
    prev_broker_order_id: str | None = None
    tag: str | None = None
    detail: str | None = None

    @property
    def fill_delta(self) -> int:
        return self.order.filled_qty - self.prev_filled_qty
