"""Messages to WatcherActor, which reconciles the broker's order and position books into ours."""

from __future__ import annotations

from typing import Any

from messages.base import Frozen


class BrokerOrderNotFound(Frozen):
    """-> Watcher: the broker answered that it does not know one of our accepted orders (CancelOrder or
    ModifyOrder `Order not found`, SingleOrdHist `no data`). Only a suspicion: the watcher confirms it with later
    reads before the order ends FAILED BROKER_UNKNOWN_ORDER."""

    command_id: str
    broker_order_id: str
    route: str  # the call that was answered: CancelOrder | ModifyOrder | SingleOrdHist
    emsg: str | None = None


class PositionsSnapshot(Frozen):
    """Watcher -> Risk/Guard: the broker's PositionBook rows, as plain dicts of typed values."""

    rows: tuple[dict[str, Any], ...]
    ok: bool = True


class LookUp(Frozen):
    """Broker -> Watcher: read the OrderBook soon (an unknown PlaceOrder outcome, or a cancel just sent).
    Answered True when asked."""


class PollNow(Frozen):
    """-> Watcher (ask): the start-up read of the OrderBook (skipped when a read followed the socket's
    connection). Answered True."""


class WsStateChanged(Frozen):
    """Broker -> Watcher: the order WebSocket changed state (connected | disconnected | auth_failed | ...)."""

    state: str


class GetWatcherStatus(Frozen):
    """-> Watcher (ask): {"ws", "last_poll_ok", "reads", "forwarded", "filter_size", "unknown_suspects"}."""
