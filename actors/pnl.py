"""Positions and P&L per strategy from our own fills (pure: the read API feeds it rows and last prices).

Per strategy, instrument and product: `net_qty`; `avg_price`, the weighted average cost of the open quantity,
reset when the position goes flat (a reversal opens at the fill's price); `realized_pnl`, accrued on each
reduction against that average, counted for fills of the current IST trading day (a carried position starts the
day at its carried average); `unrealized_pnl` = (last price - average) x net quantity. Quantities are multiplied
by the contract multiplier where the broker reports one (MCX). Fees are not counted. A write-off (a position
squared off outside the service) removes quantity at the average: its P&L happened outside and is unknown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

PositionKey = tuple[str, str, str, str]  # strategy, exchange, symbol, product


@dataclass
class PositionPnl:
    strategy_name: str
    exchange: str
    symbol: str
    product: str
    net_qty: int = 0
    avg_price: float | None = None
    realized_pnl: float = 0.0
    traded_today: bool = False
    multiplier: float = 1.0
    last_price: float | None = None

    def fill(self, side: str, qty: int, price: float, *, today: bool) -> None:
        if qty <= 0:
            return
        signed = qty if side == "BUY" else -qty
        self.traded_today = self.traded_today or today
        if self.net_qty == 0 or (self.net_qty > 0) == (signed > 0):
            held = abs(self.net_qty)
            self.avg_price = ((self.avg_price or 0.0) * held + price * qty) / (held + qty)
            self.net_qty += signed
            return
        closing = min(qty, abs(self.net_qty))
        direction = 1 if self.net_qty > 0 else -1
        if today:
            self.realized_pnl += (price - (self.avg_price or price)) * closing * direction * self.multiplier
        self.net_qty -= direction * closing
        rest = qty - closing
        if self.net_qty == 0:
            self.avg_price = None
        if rest:
            self.net_qty = rest if signed > 0 else -rest
            self.avg_price = price

    def write_off(self, signed: int) -> None:
        self.net_qty += signed
        if self.net_qty == 0:
            self.avg_price = None

    @property
    def unrealized_pnl(self) -> float | None:
        if self.net_qty == 0:
            return 0.0
        if self.last_price is None or self.avg_price is None:
            return None
        return (self.last_price - self.avg_price) * self.net_qty * self.multiplier

    def as_dict(self) -> dict:
        return {"strategy_name": self.strategy_name, "exchange": self.exchange, "symbol": self.symbol,
                "product": self.product, "net_qty": self.net_qty,
                "avg_price": None if self.avg_price is None else round(self.avg_price, 4),
                "last_price": self.last_price, "realized_pnl": round(self.realized_pnl, 2),
                "unrealized_pnl": None if self.unrealized_pnl is None else round(self.unrealized_pnl, 2)}


@dataclass
class Ledger:
    positions: dict[PositionKey, PositionPnl] = field(default_factory=dict)

    def get(self, key: PositionKey) -> PositionPnl:
        found = self.positions.get(key)
        if found is None:
            found = self.positions[key] = PositionPnl(*key)
        return found


def build(events: Iterable[tuple], today_from: str, last_prices: Mapping[tuple[str, str], float] | None = None,
          multipliers: Mapping[tuple[str, str], float] | None = None) -> list[PositionPnl]:
    """Replay fills and write-offs in time order.

    `events`: ("fill", at, strategy, exchange, symbol, product, side, qty, price) or
    ("write_off", at, strategy, exchange, symbol, product, signed_qty); `at` is UTC ISO-8601 and a fill is of
    today when `at >= today_from`. Returns the positions open now or traded today, sorted."""
    ledger = Ledger()
    for event in sorted(events, key=lambda e: e[1]):
        kind, at, strategy, exchange, symbol, product = event[:6]
        position = ledger.get((strategy, exchange, symbol, product))
        if multipliers and (exchange, symbol) in multipliers:
            position.multiplier = multipliers[(exchange, symbol)] or 1.0
        if kind == "fill":
            side, qty, price = event[6:9]
            position.fill(side, int(qty), float(price or 0.0), today=at >= today_from)
        else:
            position.write_off(int(event[6]))
    out = []
    for key in sorted(ledger.positions):
        position = ledger.positions[key]
        if position.net_qty == 0 and not position.traded_today:
            continue
        if last_prices:
            position.last_price = last_prices.get((position.exchange, position.symbol))
        out.append(position)
    return out


def strategy_totals(positions: Iterable[PositionPnl], counts: Mapping[str, Mapping[str, int]]) -> list[dict]:
    """Per strategy: realized, unrealized (None when a price is missing), open positions, orders and fills today."""
    totals: dict[str, dict] = {}
    for p in positions:
        t = totals.setdefault(p.strategy_name, {"strategy_name": p.strategy_name, "realized_pnl": 0.0,
                                                "unrealized_pnl": 0.0, "open_positions": 0})
        t["realized_pnl"] = round(t["realized_pnl"] + p.realized_pnl, 2)
        u = p.unrealized_pnl
        t["unrealized_pnl"] = None if u is None or t["unrealized_pnl"] is None else round(t["unrealized_pnl"] + u, 2)
        t["open_positions"] += 1 if p.net_qty else 0
    for strategy, c in counts.items():
        t = totals.setdefault(strategy, {"strategy_name": strategy, "realized_pnl": 0.0, "unrealized_pnl": 0.0,
                                         "open_positions": 0})
        t.update(orders=c.get("orders", 0), fills=c.get("fills", 0))
    for t in totals.values():
        t.setdefault("orders", 0)
        t.setdefault("fills", 0)
    return [totals[k] for k in sorted(totals)]
