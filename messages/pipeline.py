"""The order pipeline: registered legs through the blockers to the broker (risk -> guard -> broker)."""

from __future__ import annotations

from messages.base import Frozen
from messages.orders import OrderSnapshot


class OrdersRegistered(Frozen):
    """Store -> Risk: the legs of one alert, durably CREATED, to pass the blockers together (the store announces
    every committed alert, whoever registered it)."""

    orders: tuple[OrderSnapshot, ...]


class RiskCleared(Frozen):
    """Risk -> Guard: legs that passed the risk blocker."""

    orders: tuple[OrderSnapshot, ...]


class SendLegs(Frozen):
    """Guard -> Broker: legs of one alert that passed every blocker, to be sent in this order.

    together: the ENTRY legs of a spread. Every leg is priced before any is claimed; if one cannot be priced,
    claimed or placed, the legs not yet sent are held (FAILED `SEND_FAILED:OTHER_LEG_BLOCKED`), so a spread never
    goes out one-legged through a fault of ours. Otherwise (exits) each leg goes on its own."""

    orders: tuple[OrderSnapshot, ...]
    together: bool = False
