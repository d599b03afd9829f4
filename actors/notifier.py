"""NotifierActor: Telegram `sendMessage` (log-only when no token), queued, retried with backoff.

It runs in its own thread and nobody waits for it: a dead or slow Telegram delays only notifications.
Order notifications are derived from StoreActor's OrderChanged stream, so each fact is told exactly once.
`describe_change` and `Outbox` are the pure parts.

Without a token a notification is only logged. The routine per-order kinds (ROUTINE: alert, placed, filled,
partial) are logged at DEBUG: the same facts are already INFO event lines of StoreActor (events.jsonl), and
three INFO lines per order cost CPU on every sink. Everything else (blocked, rejected, risk, external, ledger,
supervisor, service, ...) stays at INFO, and an undelivered notification is a WARNING event.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import requests
from loguru import logger

from actors.base import SupervisedActor

from messages.commands import Notify, Tick
from messages.control import GetNotifierStats
from messages.orders import OrderChanged
from actors.ticker import Ticker

# Notification kinds that every order produces; logged at DEBUG when there is no token (see the docstring).
ROUTINE = frozenset({"alert", "placed", "filled", "partial"})


BLOCKER_TAGS = frozenset({"VALIDATION_FAILED", "RISK_BLOCKED", "GUARD_BLOCKED", "DUPLICATE_BLOCKED"})


def failure_kind(tag: str | None) -> str:
    """What a FAILED tag means to a person: cancelled, blocked, rejected, expired or failed."""
    head = (tag or "").split(":")[0]
    if head in ("BROKER_CANCELED", "BROKER_CANCELLED"):
        return "cancelled"
    if head in BLOCKER_TAGS:
        return "blocked"
    if head == "BROKER_REJECTED":
        return "rejected"
    if head == "BROKER_EXPIRED":
        return "expired"
    return "failed"


def describe_change(change: OrderChanged) -> Notify | None:
    """The notification for an order change, or None if it is not worth one."""
    o = change.order
    what = f"{o.side} {o.quantity} {o.symbol} ({o.strategy_name} {o.execution_type})"
    if change.to_status == "EXECUTED" and change.from_status != "EXECUTED":
        return Notify(kind="filled", command_id=o.command_id,
                      text=f"Filled {what}: {o.filled_qty} @ {o.avg_price or 0:.2f}")
    if change.to_status == "PARTIAL" and change.fill_delta > 0:
        return Notify(kind="partial", command_id=o.command_id,
                      text=f"Partially filled {what}: {o.filled_qty}/{o.quantity} @ {o.avg_price or 0:.2f}")
    if change.to_status == "FAILED" and change.from_status != "FAILED":
        tag = change.tag or ""
        kind = failure_kind(tag)
        if kind == "cancelled":  # a cancel (ours, the operator's at the broker, a flatten) is not a rejection
            filled = f", {o.filled_qty}/{o.quantity} filled before" if o.filled_qty else ""
            return Notify(kind="cancelled", command_id=o.command_id, text=f"Cancelled {what}{filled}: {tag}")
        if kind != "blocked":
            kind = "rejected"
        label = "Blocked" if kind == "blocked" else "Failed"
        if tag == "BROKER_UNKNOWN_ORDER":  # the operator must look at the broker's book: say which order
            filled = f", {o.filled_qty} filled" if o.filled_qty else ""
            return Notify(kind=kind, command_id=o.command_id,
                          text=f"{label} {what}: {tag} (broker id {o.broker_order_id}{filled}: the broker no "
                               f"longer knows this order; check its order book)")
        return Notify(kind=kind, command_id=o.command_id, text=f"{label} {what}: {tag}")
    if o.broker_order_id and not change.prev_broker_order_id and change.to_status in ("SENT_TO_BROKER", "PARTIAL"):
        return Notify(kind="placed", command_id=o.command_id, text=f"Placed {what}: broker id {o.broker_order_id}")
    return None


@dataclass
class Pending:
    note: Notify
    attempts: int = 0
    next_at: float = 0.0


@dataclass
class Outbox:
    """The queue with its retry schedule (exponential backoff, capped)."""

    max_attempts: int
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    queue: deque = field(default_factory=deque)

    def add(self, note: Notify) -> None:
        self.queue.append(Pending(note))

    def due(self, now: float) -> Pending | None:
        if self.queue and self.queue[0].next_at <= now:
            return self.queue[0]
        return None

    def delivered(self) -> None:
        self.queue.popleft()

    def failed(self, now: float) -> Pending | None:
        """Record a failed attempt of the head; returns it if it is now given up."""
        head = self.queue[0]
        head.attempts += 1
        if head.attempts >= self.max_attempts:
            self.queue.popleft()
            return head
        head.next_at = now + min(self.base_delay_s * 2 ** (head.attempts - 1), self.max_delay_s)
        return None


class NotifierActor(SupervisedActor):
    registry_name = "notifier"
    HANDLERS = {
        OrderChanged: "_on_order_changed",
        Notify: "_enqueue",
        Tick: "_on_tick",
        GetNotifierStats: "_on_stats",
    }

    def __init__(self, registry, config):
        super().__init__(registry)
        self.cfg = config.telegram
        self.outbox = Outbox(max_attempts=self.cfg.max_attempts)
        self.session = requests.Session()
        self.stats = {"delivered": 0, "undelivered": 0, "logged": 0}
        self.sent: list[dict] = []  # recent notifications, for /diagnostics and tests
        self.ticker: Ticker | None = None

    def on_start(self):
        self.ticker = Ticker(self.actor_ref, 0.25, "flush").start()

    def on_stop(self):
        if self.ticker:
            self.ticker.stop()
        self._flush(final=True)

    def _on_order_changed(self, message: OrderChanged) -> None:
        note = describe_change(message)
        if note:
            self._enqueue(note)

    def _on_tick(self, message: Tick) -> None:
        self._flush()

    def _on_stats(self, message: GetNotifierStats) -> dict:
        return dict(self.stats, pending=len(self.outbox.queue), recent=list(self.sent[-200:]))

    def _enqueue(self, note: Notify) -> None:
        self.sent.append({"kind": note.kind, "text": note.text, "command_id": note.command_id})
        del self.sent[:-500]
        if not self.cfg.token:
            self.stats["logged"] += 1
            logger.log("DEBUG" if note.kind in ROUTINE else "INFO", "notify [{}] {}", note.kind, note.text)
            return
        self.outbox.add(note)
        self._flush()

    def _scrub(self, text: str) -> str:
        return text.replace(self.cfg.token, "***") if self.cfg.token else text

    def _flush(self, final: bool = False) -> None:
        """Send what is due, in order; stop at the first failure and retry on a later tick.

        On the final flush (stopping) each pending message gets one more try within a few seconds.
        """
        deadline = time.monotonic() + 3.0
        while self.outbox.queue:
            now = time.monotonic()
            head = self.outbox.queue[0] if final else self.outbox.due(now)
            if head is None:
                return
            if final and now > deadline:
                self._undelivered(self.outbox.queue.popleft(), "service stopping")
                continue
            error = self._send(head.note)
            if error is None:
                self.outbox.delivered()
                self.stats["delivered"] += 1
                continue
            if final:
                self._undelivered(self.outbox.queue.popleft(), error)
                continue
            given_up = self.outbox.failed(now)
            if given_up is not None:
                self._undelivered(given_up, error)
                continue
            return

    def _send(self, note: Notify) -> str | None:
        url = f"{self.cfg.api_url.rstrip('/')}/bot{self.cfg.token}/sendMessage"
        try:
            reply = self.session.post(url, json={"chat_id": self.cfg.chat_id, "text": note.text},
                                      timeout=self.cfg.timeout_s)
        except requests.RequestException as exc:
            return self._scrub(f"{type(exc).__name__}: {exc}")
        return None if reply.status_code == 200 else f"HTTP {reply.status_code}"

    def _undelivered(self, item: Pending, error: str) -> None:
        self.stats["undelivered"] += 1
        logger.bind(event="notification", delivered=False).warning(
            "notification undelivered after {} attempt(s) ({}): [{}] {}", item.attempts, error[:200],
            item.note.kind, item.note.text)
