"""WatcherActor: step 6 — the broker's truth back into the database.

WebSocket order updates (forwarded by BrokerActor) are applied as they arrive; OrderBook polling runs behind
them as the fallback and the reconciliation. Orders whose PlaceOrder outcome is unknown are looked up by their
command_id in the OrderBook `remarks`; after a grace period and several look-ups they become FAILED
LOST_IN_FLIGHT (and are still adopted if they show up later). `PollFilter` and `LostTracker` are the pure parts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

from loguru import logger

from actors.base import SupervisedActor

from messages.commands import BrokerOrderReport, PositionsSnapshot, Tick, TransitionOrder
from runtime.noren.errors import BrokerError, SessionExpired
from runtime.ticker import Ticker
from storage import transitions as T
from storage.models import Order

SIDES = {"B": "BUY", "S": "SELL"}
IDLE_POLL_EVERY = 5


def report_from_row(row, origin: str) -> BrokerOrderReport:
    """An OrderBook row (messages.noren.OrderBookEntry) as a BrokerOrderReport."""
    return BrokerOrderReport(
        remarks=row.remarks, broker_order_id=row.norenordno, status=row.status or "",
        filled_qty=int(row.fillshares or 0), avg_price=row.avgprc, reason=row.rejreason, exchange=row.exch,
        symbol=row.tsym, side=SIDES.get(row.trantype or "", row.trantype), quantity=int(row.qty or 0),
        origin=origin,
    )


@dataclass
class PollFilter:
    """Forward only OrderBook rows that changed since the last poll (the store need not re-read the rest)."""

    seen: dict[str, tuple] = field(default_factory=dict)

    def changed(self, reports: list[BrokerOrderReport]) -> list[BrokerOrderReport]:
        out = []
        for r in reports:
            key = r.broker_order_id or r.remarks or ""
            state = (r.status, r.filled_qty, r.avg_price)
            if self.seen.get(key) != state:
                self.seen[key] = state
                out.append(r)
        return out

    def forget(self) -> None:
        self.seen.clear()


@dataclass
class LostTracker:
    """Counts OrderBook look-ups of SENT_TO_BROKER orders that have no broker id yet."""

    grace_s: float
    min_lookups: int
    lookups: dict[str, int] = field(default_factory=dict)

    def observe(self, pending: dict[str, float], found: set[str], now: float) -> list[str]:
        """pending: command_id -> epoch seconds of its last update. Returns the ids to mark LOST_IN_FLIGHT."""
        lost = []
        for command_id, since in pending.items():
            if command_id in found:
                self.lookups.pop(command_id, None)
                continue
            n = self.lookups.get(command_id, 0) + 1
            self.lookups[command_id] = n
            if n >= self.min_lookups and now - since >= self.grace_s:
                lost.append(command_id)
                self.lookups.pop(command_id, None)
        for command_id in list(self.lookups):
            if command_id not in pending:
                del self.lookups[command_id]
        return lost


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


class WatcherActor(SupervisedActor):
    registry_name = "watcher"

    def __init__(self, registry, config):
        super().__init__(registry)
        self.config = config
        self.reader = None
        self.filter = PollFilter()
        self.lost = LostTracker(config.broker.lost_grace_s, config.broker.lost_min_lookups)
        self.tickers: list[Ticker] = []
        self.ws_state = "disconnected"
        self.last_poll_ok: float | None = None
        self.idle_polls = 0

    def on_start(self):
        self.reader = self.registry.ask("broker", "reader", timeout=10)
        self.tickers = [
            Ticker(self.actor_ref, self.config.broker.poll_interval_s, "poll").start(),
            Ticker(self.actor_ref, self.config.risk.pnl_poll_interval_s, "positions").start(),
        ]

    def on_stop(self):
        for ticker in self.tickers:
            ticker.stop()

    def handle(self, message):
        if isinstance(message, BrokerOrderReport):
            self.registry.tell("store", message)
            return None
        if isinstance(message, Tick):
            if message.name == "poll":
                self.poll_orders()
            elif message.name == "positions":
                self.poll_positions()
            return None
        if message == "lookup" or message == "poll_now":
            self.poll_orders(force=True)
            return True
        if isinstance(message, str) and message.startswith("ws:"):
            self.ws_state = message[3:]
            logger.info("broker WebSocket {}", self.ws_state)
            if self.ws_state == "auth_failed":
                self.registry.tell("broker", "relogin")  # the token was refused: a fresh login re-authenticates
            if self.ws_state == "connected":
                self.filter.forget()  # re-read everything: pushes may have been missed while down
                self.poll_orders(force=True)
            return None
        if message == "status":
            return {"ws": self.ws_state, "last_poll_ok": self.last_poll_ok}
        return None

    def _read(self, call):
        try:
            return call()
        except SessionExpired:
            logger.warning("broker session expired (seen by the watcher); asking for a new login")
            self.registry.tell("broker", "relogin")
        except BrokerError as exc:
            logger.warning("broker read failed: {}", exc)
        return None

    def poll_orders(self, force: bool = False) -> None:
        open_rows = list(Order.select(Order.command_id, Order.status, Order.broker_order_id, Order.updated_at)
                         .where(Order.status.in_([T.SENT_TO_BROKER, T.PARTIAL])))
        self.idle_polls = 0 if open_rows else self.idle_polls + 1
        if not open_rows and not force and self.idle_polls % IDLE_POLL_EVERY:
            return  # nothing of ours open: reconcile (external orders, late adoptions) less often
        book = self._read(self.reader.order_book)
        if book is None:
            return
        self.last_poll_ok = time.time()
        reports = [report_from_row(row, "poll") for row in book]
        for report in self.filter.changed(reports):
            self.registry.tell("store", report)  # ours are applied; others are recorded as external
        found = {r.remarks for r in reports if r.remarks}
        pending = {r.command_id: _epoch(r.updated_at) for r in open_rows
                   if r.status == T.SENT_TO_BROKER and not r.broker_order_id}
        for command_id in self.lost.observe(pending, found, time.time()):
            logger.error("order {} not found at the broker after the grace period: LOST_IN_FLIGHT", command_id)
            self.registry.tell("store", TransitionOrder(
                command_id=command_id, to_status="FAILED", expect_from=(T.SENT_TO_BROKER,), tag="LOST_IN_FLIGHT",
                detail="PlaceOrder outcome unknown and not in the OrderBook"))

    def poll_positions(self) -> None:
        rows = self._read(self.reader.position_book)
        ok = rows is not None
        snapshot = PositionsSnapshot(rows=tuple(r.model_dump() for r in rows or ()), ok=ok)
        self.registry.tell("risk", snapshot)
        if ok:
            self.registry.tell("guard", snapshot)
