"""Positions and P&L per strategy, as served by GET /positions, GET /strategies, `oms positions` and the dashboard.

Our own fills and write-offs (storage/queries.py) are replayed by actors/pnl.py; last prices and contract
multipliers come from RiskActor's latest PositionBook (GetLastPrices). Without them (risk not answering, no
PositionBook read yet, `oms positions` with the service down) last_price and unrealized_pnl are None: unknown is
never shown as zero.
"""

from __future__ import annotations

from datetime import UTC, datetime, time

from loguru import logger

from actors import pnl
from actors.risk_rules import IST, trading_day
from messages.risk import GetLastPrices, LastPrices
from storage import queries

PRICES_TIMEOUT_S = 2.0


def today_from(now: datetime | None = None) -> str:
    """The start of the current IST trading day as UTC ISO-8601 (comparable with stored times as text)."""
    day = trading_day(now or datetime.now(UTC))
    return datetime.combine(day, time.min, IST).astimezone(UTC).isoformat(timespec="microseconds")


def market(registry, timeout: float = PRICES_TIMEOUT_S) -> LastPrices:
    """RiskActor's last prices; empty when it cannot answer (the positions are still shown, prices unknown)."""
    if registry is None:
        return LastPrices()
    try:
        reply = registry.ask("risk", GetLastPrices(), timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - a read must not fail because risk is restarting
        logger.warning("positions: no last prices from risk ({!r})", exc)
        return LastPrices()
    return reply if isinstance(reply, LastPrices) else LastPrices()


def positions(prices: LastPrices | None = None, now: datetime | None = None) -> list[pnl.PositionPnl]:
    last, mult = (prices or LastPrices()).maps()
    events = queries.fill_events() + queries.write_off_events()
    return pnl.build(events, today_from(now), last, mult)


def position_rows(prices: LastPrices | None = None, now: datetime | None = None) -> list[dict]:
    """Per strategy, instrument and product, open now or traded today (closed today: net_qty 0)."""
    return [p.as_dict() for p in positions(prices, now)]


def strategy_rows(prices: LastPrices | None = None, now: datetime | None = None) -> list[dict]:
    """Per strategy: realized_pnl, unrealized_pnl, open_positions, today's orders and fills."""
    return pnl.strategy_totals(positions(prices, now), queries.strategy_day_counts(today_from(now)))
