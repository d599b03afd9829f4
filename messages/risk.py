"""RiskActor's messages (the kill switch, resume, reduce, flatten, its state) and the payloads of its pure core
(actors/risk_rules.py)."""

from __future__ import annotations

from messages.base import Frozen


# ---- requests to RiskActor (POST /risk/halt|resume|reduce|flatten, GET /risk) ----------------------

class Halt(Frozen):
    """The kill switch: no new entries (answered with the risk view)."""

    reason: str = "MANUAL"


class Resume(Frozen):
    """Back to ACTIVE (answered with the risk view; a breach keeps entries blocked)."""


class GetState(Frozen):
    """The risk view (GET /risk, /health)."""


class FlattenRound(Frozen):
    """RiskActor -> itself: run a flatten round on a fresh PositionBook now (after answering the request)."""


class Reduce(Frozen):
    """Exits only: new entries are blocked `RISK_BLOCKED:REDUCING_ONLY` until Resume."""


class Flatten(Frozen):
    """Cancel our open orders and EXIT every non-CNC position in scope, repeating until the broker is flat.

    No scope = the whole account (and the state becomes at least REDUCING, so entries cannot refill it).
    """

    strategy: str | None = None
    exchange: str | None = None
    reason: str = "MANUAL"


class StopFlatten(Frozen):
    """End every running flatten job (`POST /risk/flatten/stop`, `oms risk stop-flatten`). The trading state is
    left as it is: a breach stays HALTED, a whole-account flatten's REDUCING stays until resume."""


# ---- payloads of the pure core ----------------------------------------------------------------------

class RiskEvent(Frozen):
    """Something the actor must log and notify (and persist): WARNING, BREACH, COOLDOWN, DAY_CLOSED, ..."""

    kind: str
    text: str


class CancelIntent(Frozen):
    """One of our orders open at the broker, to cancel before its position is exited."""

    command_id: str
    broker_order_id: str
    strategy_name: str
    exchange: str
    symbol: str
    execution_type: str


class ExitIntent(Frozen):
    """One EXIT leg to register (source "risk") for a strategy's share of a broker position."""

    strategy_name: str
    exchange: str
    symbol: str
    product: str  # NRML | MIS (never CNC)
    side: str  # the closing side: SELL for a long position, BUY for a short one
    quantity: int


class Leftover(Frozen):
    """A broker position in scope that no strategy of ours holds (external, or a ledger mismatch)."""

    exchange: str
    symbol: str
    product: str
    netqty: int


class FlattenPlan(Frozen):
    """One round of flattening: cancel these, exit those, wait for the rest."""

    cancels: tuple[CancelIntent, ...] = ()
    exits: tuple[ExitIntent, ...] = ()
    # Positions not exited this round because an order of ours on them is still open / in flight.
    waiting: tuple[str, ...] = ()
    leftovers: tuple[Leftover, ...] = ()

    @property
    def idle(self) -> bool:
        """Nothing to do and nothing to wait for (leftovers cannot be exited through the pipeline)."""
        return not (self.cancels or self.exits or self.waiting)


# ---- last prices for the positions view (GET /positions, the dashboard) --------------------------------

class GetPnlSeries(Frozen):
    """Ask RiskActor for today's P&L through the day: {"day", "points": [{"at", "pnl", "floor"}]}, one point a
    minute (the dashboard's chart)."""


class GetLastPrices(Frozen):
    """Ask RiskActor for the last prices and contract multipliers of its latest PositionBook (answered with
    LastPrices; empty until a non-empty PositionBook has been read)."""


class LastPrice(Frozen):
    exchange: str
    symbol: str
    last_price: float | None = None
    multiplier: float = 1.0  # mult x prcftr of the PositionBook row (1 where the broker reports none)


class LastPrices(Frozen):
    prices: tuple[LastPrice, ...] = ()
    at: str | None = None  # UTC ISO-8601 of the PositionBook read

    def maps(self) -> tuple[dict[tuple[str, str], float], dict[tuple[str, str], float]]:
        """{(exchange, symbol): last price} (known prices only) and {(exchange, symbol): multiplier}."""
        last = {(p.exchange, p.symbol): p.last_price for p in self.prices if p.last_price is not None}
        mult = {(p.exchange, p.symbol): p.multiplier for p in self.prices}
        return last, mult
