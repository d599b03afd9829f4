"""Messages to BrokerActor (the one NorenOMS session) and what the broker says about our orders."""

from __future__ import annotations

from messages.base import Frozen


class BrokerOrderReport(Frozen):
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


class InstrumentQuery(Frozen):
    """-> Broker (ask): what the broker knows of an instrument (SearchScrip, cached for the trading day)."""

    exchange: str
    symbol: str


class InstrumentInfo(Frozen):
    exchange: str
    symbol: str
    kind: str  # option | future | equity
    found: bool
    token: str | None = None
    lot_size: int | None = None
    tick_size: float | None = None


class CancelOrder(Frozen):
    """-> Broker: cancel one of our orders at the broker (an EXIT superseding a resting entry, a risk breach)."""

    command_id: str
    reason: str


class GetReader(Frozen):
    """-> Broker (ask): a forked REST client sharing the broker's session, for reads (books, positions)."""


class GetFreezeTable(Frozen):
    """-> Broker (ask): the freeze quantities, {underlying: qty} (built-in + [broker] freeze_qty)."""


class Relogin(Frozen):
    """-> Broker: a reader saw `Session Expired` (or the WebSocket token was refused): log in anew."""


class ReloginDue(Frozen):
    """-> Broker: the scheduled retry after a refused login (told by its own timer)."""


class GetSession(Frozen):
    """-> Broker (ask): the session gate's snapshot; answered once the first login is done."""


class IsLoggedIn(Frozen):
    """-> Broker (ask): whether the broker holds a session now."""


class IsWsConnected(Frozen):
    """-> Broker (ask): whether the order WebSocket is connected (a restarted watcher missed its last state)."""
