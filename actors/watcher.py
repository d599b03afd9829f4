"""WatcherActor: step 6 — the broker's truth back into the database.

WebSocket order updates (forwarded by BrokerActor) are applied as they arrive. The OrderBook is read behind
them as the fallback and the reconciliation. While the WebSocket is down (or switched off) the book is read
every `poll_interval_s` while any order of ours is open, as the only source of fills. While it is connected,
reading the whole day's book every interval would cost O(orders of the day) each time for nothing, so the
book is read only when something may have been missed: an order whose PlaceOrder outcome is unknown, every
(re)connection, and a periodic full reconcile (which also picks up external orders and late adoptions). An
open order with no news for a while (a missed push, or a resting order) is looked up on its own with
SingleOrdHist, which costs the same whatever the size of the day's book.

Orders whose PlaceOrder outcome is unknown are looked up by their command_id in the OrderBook `remarks`;
after a grace period and several look-ups they become FAILED LOST_IN_FLIGHT (and are still adopted if they
show up later). Only book rows that would change something in the database are forwarded to the store: the
comparison uses the store's own rule (`plan_broker_update`), so the outcome is the same as forwarding every
row. An accepted order the broker says it does not know (`Order not found` to a cancel, SingleOrdHist without
data, or missing from a full book read and then from SingleOrdHist) is a suspect; absent from two successful book
reads `poll_interval_s` apart and from a final SingleOrdHist, it becomes FAILED BROKER_UNKNOWN_ORDER (failed reads
prove nothing). `PollFilter`, `LostTracker`, `Silence`, `UnknownOrders` and `BookReconciler` are the plain parts.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterable

from loguru import logger

from actors.base import SupervisedActor

from messages.broker import GetReader, IsWsConnected, Relogin
from messages.commands import BrokerOrderNotFound, BrokerOrderReport, PositionsSnapshot, Tick, TransitionOrder
from messages.watcher import GetWatcherStatus, LookUp, PollNow, WsStateChanged
from messages.noren import TERMINAL_STATUSES
from runtime.noren.errors import BrokerError, SessionExpired, says_order_unknown
from actors.ticker import Ticker
from storage import transitions as T
from storage import book as stored_book
from storage import queries
from storage.book import SETTLED

SIDES = {"B": "BUY", "S": "SELL"}
# WebSocket down or off: with nothing of ours open, read the book only every 5th tick.
IDLE_POLL_EVERY = 5
# WebSocket connected: a full reconcile every 15 poll intervals (30 s at the default 2 s), at most every 60 s.
# Tied to poll_interval_s because that is the operator's "how stale may the database be" knob. It is only the
# net under the pushes and the look-ups below, and it is what a soak pays for: every read of the whole day's
# book costs CPU (a GIL stall in the ack path) and transient memory in proportion to the orders of the day.
RECONCILE_EVERY_POLLS = 15
RECONCILE_MAX_S = 60.0
# WebSocket connected: an open order with no push for 5 intervals (10 s) is looked up (SingleOrdHist), then
# again after twice as long each time it is still quiet (a resting limit order), up to the reconcile period.
QUIET_AFTER_POLLS = 5
# At most this many of those look-ups per tick (the broker's rate limits); the others wait for the next tick.
QUIET_LOOKUPS_PER_TICK = 5
# ... and an order with a broker id that has had no push at all after 2 intervals: its acks normally arrive
# within milliseconds of the placement, so this is the sign of a socket that is up but not delivering.
UNHEARD_AFTER_POLLS = 2
# WebSocket connected: a SENT_TO_BROKER order still without broker id this long after its claim has an
# unknown outcome (a normal PlaceOrder answers in milliseconds): read the book on every tick for it.
NO_ID_LOOKUP_AFTER_S = 1.0
# WebSocket connected: the periodic reconcile is also spaced at least 100 times the last read's duration apart,
# so that with a huge day's book (100 000 rows take seconds, and the parse competes with the order path for the
# GIL) it stays about 1 % of the time; it is only the safety net behind the pushes and the per-order look-ups
# of quiet orders. Look-ups for unknown outcomes and the read after a reconnection are never held back.
NET_READ_SPACING = 100
# SingleOrdHist look-ups per book read for orders the broker may no longer know (BROKER_UNKNOWN_ORDER): of
# those missing from the read, and of the suspects due their final check. The others wait for the next read.
UNKNOWN_LOOKUPS_PER_READ = 5
UNKNOWN_TAG = "BROKER_UNKNOWN_ORDER"
# A parsed book costs ~5 KB a row while it is alive, and glibc keeps the freed heap: after reading a large
# book the process would keep that high-water mark (~600 MB at 100 000 rows). Give it back to the OS after
# such a read (a trim takes up to ~20 ms, against ~50 ms of parsing for 1 000 rows).
TRIM_AFTER_ROWS = 1_000


def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to give back this way
        return None


MALLOC_TRIM = _malloc_trim()


def report_from_row(row, origin: str) -> BrokerOrderReport:
    """An OrderBook row (messages.noren.OrderBookRow or OrderBookEntry) as a BrokerOrderReport."""
    return BrokerOrderReport(
        remarks=row.remarks, broker_order_id=row.norenordno, status=row.status or "",
        filled_qty=int(row.fillshares or 0), avg_price=row.avgprc, reason=row.rejreason, exchange=row.exch,
        symbol=row.tsym, side=SIDES.get(row.trantype or "", row.trantype), quantity=int(row.qty or 0),
        origin=origin,
    )


def view_of_row(row) -> T.BrokerView:
    """What the store will make of this row once it is a BrokerOrderReport (the same conversion)."""
    return T.BrokerView(status=T.normalise_broker_status(row.status or ""), filled_qty=int(row.fillshares or 0),
                        avg_price=row.avgprc, broker_order_id=row.norenordno, reason=row.rejreason)


@dataclass
class PollFilter:
    """The book rows already dealt with: key (broker id, else remarks) -> (status, filled, avg) last handled.

    An open row with the same state as last time need not be compared or forwarded again. Rows that are
    terminal at the broker and agree with our database are not kept (`settle`), so memory stays bounded by the
    orders still open; `keep_only` drops whatever left the book (a new trading day)."""

    seen: dict[str, tuple] = field(default_factory=dict)

    @staticmethod
    def key(broker_order_id: str | None, remarks: str | None) -> str:
        return broker_order_id or remarks or ""

    def unchanged(self, key: str, state: tuple) -> bool:
        return self.seen.get(key) == state

    def remember(self, key: str, state: tuple) -> None:
        self.seen[key] = state

    def settle(self, key: str) -> None:
        self.seen.pop(key, None)

    def keep_only(self, keys: set[str]) -> None:
        for key in [k for k in self.seen if k not in keys]:
            del self.seen[key]

    def forget(self) -> None:
        self.seen.clear()

    def forget_open(self) -> None:
        """Compare the open rows with the database again at the next read (a full reconcile); the terminal
        rows kept here were forwarded and are not yet confirmed, and must not be forwarded again."""
        for key in [k for k, state in self.seen.items() if state[0] not in TERMINAL_STATUSES]:
            del self.seen[key]


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


@dataclass
class Silence:
    """When each open order (by command_id) is due a look-up in the book because no push has come for it.

    A push resets its wait to `quiet_s`; an order never heard of at all is due after `unheard_s`; each book
    read that covered it doubles the wait, up to `max_s` (a resting order is not looked up every interval)."""

    quiet_s: float
    unheard_s: float
    max_s: float
    due: dict[str, float] = field(default_factory=dict)
    wait: dict[str, float] = field(default_factory=dict)
    heard_at: dict[str, float] = field(default_factory=dict)  # pushes, also for orders not tracked yet

    def heard(self, command_id: str, now: float) -> None:
        self.heard_at[command_id] = now
        if command_id in self.due:
            self.due[command_id] = now + self.quiet_s
            self.wait[command_id] = self.quiet_s

    def track(self, with_broker_id: Iterable[str], open_ids: set[str], now: float) -> None:
        """The open orders that have a broker id are tracked; orders no longer open are forgotten."""
        for command_id in with_broker_id:
            if command_id not in self.due:
                heard = self.heard_at.get(command_id)
                self.due[command_id] = heard + self.quiet_s if heard is not None else now + self.unheard_s
                self.wait[command_id] = self.quiet_s
        for table in (self.due, self.wait, self.heard_at):
            for command_id in [c for c in table if c not in open_ids]:
                del table[command_id]

    def overdue(self, now: float) -> list[str]:
        return [command_id for command_id, due in self.due.items() if due <= now]

    def looked_up(self, now: float, command_ids: Iterable[str] | None = None) -> None:
        """These orders (default: every tracked one, a book read covers them all) were looked up: back off."""
        for command_id in list(self.due) if command_ids is None else command_ids:
            if command_id in self.due:
                self.wait[command_id] = min(self.wait[command_id] * 2, self.max_s)
                self.due[command_id] = now + self.wait[command_id]


@dataclass
class Suspect:
    """An accepted order (it has a broker id) that the broker answered `Order not found` / `no data` for."""

    broker_order_id: str
    since: float  # monotonic: when the broker's answer arrived
    why: str
    absent_at: list[float] = field(default_factory=list)  # starts of the counted book reads that lacked it


@dataclass
class UnknownOrders:
    """The orders suspected to be unknown to the broker, and when each one is proved so (BROKER_UNKNOWN_ORDER).

    A suspicion comes from the broker's own answer (`Order not found` to a cancel or modify, SingleOrdHist with no
    data). It is confirmed only by successful reads that lack the order: `reads_needed` full OrderBook reads that
    began after the suspicion and at least `spacing_s` apart, then a SingleOrdHist that still finds nothing. A
    failed read counts for nothing either way. Every suspicion ends: seen again in any read -> dropped; no
    longer open in our database (a report settled it) -> dropped; confirmed -> the caller fails the order."""

    spacing_s: float
    reads_needed: int = 2
    suspects: dict[str, Suspect] = field(default_factory=dict)  # command_id -> Suspect

    def suspect(self, command_id: str, broker_order_id: str, now: float, why: str) -> bool:
        """Start checking an order; False if it is checked already (its count goes on)."""
        known = self.suspects.get(command_id)
        if known is not None and known.broker_order_id == broker_order_id:
            return False
        self.suspects[command_id] = Suspect(broker_order_id, now, why)
        return True

    def keep_only(self, open_ids: dict[str, str]) -> list[str]:
        """open_ids: our open orders, command_id -> broker id. Drops the others; returns the dropped ids."""
        gone = [c for c, s in self.suspects.items() if open_ids.get(c) != s.broker_order_id]
        for command_id in gone:
            del self.suspects[command_id]
        return gone

    def found(self, command_id: str) -> bool:
        """The broker showed the order after all: not unknown."""
        return self.suspects.pop(command_id, None) is not None

    def wants_read(self, now: float) -> bool:
        """Is a full book read due for one of them?"""
        return any(len(s.absent_at) < self.reads_needed and (not s.absent_at or now - s.absent_at[-1] >= self.spacing_s)
                   for s in self.suspects.values())

    def book_read(self, started: float, broker_ids: set[str], remarks: set[str]) -> list[str]:
        """A successful full OrderBook read that began at `started` (monotonic) listed these orders. Returns the
        command_ids found in it (dropped); the others absent from it have the read counted if it qualifies."""
        found = []
        for command_id, s in list(self.suspects.items()):
            if s.broker_order_id in broker_ids or command_id in remarks:
                del self.suspects[command_id]
                found.append(command_id)
            elif started >= s.since and len(s.absent_at) < self.reads_needed and (
                    not s.absent_at or started - s.absent_at[-1] >= self.spacing_s):
                s.absent_at.append(started)
        return found

    def due_history(self) -> list[str]:
        """The orders absent from enough book reads: their final check (SingleOrdHist) is due."""
        return [c for c, s in self.suspects.items() if len(s.absent_at) >= self.reads_needed]

    def history(self, command_id: str, listed: bool) -> bool:
        """The final SingleOrdHist answered: listed (the broker knows it: dropped) or `no data` / `not found`.
        Returns True when the order is confirmed unknown (and forgets it)."""
        suspect = self.suspects.pop(command_id, None)
        return suspect is not None and not listed and len(suspect.absent_at) >= self.reads_needed


def by_remarks(rows: list) -> list:
    """For each row (with remarks): SETTLED, our OrderState, or None when its remarks are no command_id."""
    return stored_book.states_by_remarks([(row.remarks, int(row.fillshares or 0)) for row in rows])


def report_changes(current: T.OrderState, row) -> bool:
    """Would the store change `current` for this book row (T.report_changes_order), with a shortcut for the
    common case of a reconcile: an EXECUTED order that already has its fills, price and broker id (EXECUTED
    is terminal: only more fills, a first price or a first broker id could still be written)."""
    if (current.status == T.EXECUTED and current.broker_order_id and current.avg_price is not None
            and current.filled_qty >= int(row.fillshares or 0)):
        return False
    return T.report_changes_order(current, view_of_row(row))


def _row_state(row) -> tuple:
    """What PollFilter remembers of a book row: enough to tell that it has not moved."""
    return (row.status or "", row.fillshares, row.avgprc)


@dataclass
class BookReconciler:
    """Decides which OrderBook rows go to the store: those that would change something there.

    Our order (matched like the store does: remarks = command_id, else broker id): forwarded when
    `plan_broker_update` against its row in the database plans a change. Not ours: forwarded when it is not
    yet in `external_orders` or its status or fills moved (the store records it; only the first sighting is
    notified). Open rows unchanged since the last read are skipped without a database read (PollFilter);
    terminal rows are compared every time, and forgotten once the database agrees (bounded memory)."""

    filter: PollFilter = field(default_factory=PollFilter)

    def select(self, book: list, complete: bool = True) -> list[BrokerOrderReport]:
        """`book`: the whole OrderBook, or (complete=False) the latest state of some orders."""
        seen = self.filter.seen
        still_listed = set()
        candidates = []
        for row in book:
            key = PollFilter.key(row.norenordno, row.remarks)
            if key in seen:
                still_listed.add(key)
                if row.status not in TERMINAL_STATUSES and seen[key] == _row_state(row):
                    continue  # open, and as it was when last handled
            candidates.append(row)
        if complete:
            self.filter.keep_only(still_listed)
        if not candidates:
            return []
        with_remarks = [row for row in candidates if row.remarks]
        matched = dict(zip(map(id, with_remarks), by_remarks(with_remarks)))
        by_id_wanted = [row.norenordno for row in candidates if row.norenordno and matched.get(id(row)) is None]
        ours_by_id = stored_book.states_by_broker_id(by_id_wanted) if by_id_wanted else {}
        external_wanted = [bid for bid in by_id_wanted if bid not in ours_by_id]
        external = stored_book.external_states(external_wanted) if external_wanted else {}

        out = []
        for row in candidates:
            current = matched.get(id(row))
            if current is None and row.norenordno:
                current = ours_by_id.get(row.norenordno)
            if current is SETTLED:
                differs = False
            elif current is not None:
                differs = report_changes(current, row)
            elif row.norenordno:
                recorded = external.get(row.norenordno)
                differs = recorded != (T.normalise_broker_status(row.status or ""), int(row.fillshares or 0))
            else:
                differs = False  # not ours and no broker id: the store could not record it either
            key, state = PollFilter.key(row.norenordno, row.remarks), _row_state(row)
            terminal = row.status in TERMINAL_STATUSES
            if differs:
                if terminal and self.filter.unchanged(key, state):
                    continue  # forwarded already; the store has it queued (or refused it): never loop on it
                self.filter.remember(key, state)
                out.append(report_from_row(row, "poll"))
            elif terminal:
                self.filter.settle(key)
            else:
                self.filter.remember(key, state)
        return out


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


class WatcherActor(SupervisedActor):
    registry_name = "watcher"
    HANDLERS = {
        BrokerOrderReport: "_on_report",
        BrokerOrderNotFound: "_on_not_found",
        Tick: "_on_tick",
        LookUp: "_on_lookup",
        PollNow: "_on_poll_now",
        WsStateChanged: "_on_ws_state",
        GetWatcherStatus: "_on_status",
    }

    def __init__(self, registry, config, startup: bool = False):
        super().__init__(registry)
        self.config = config
        b = config.broker
        self.reader = None
        self.reconciler = BookReconciler()
        self.lost = LostTracker(b.lost_grace_s, b.lost_min_lookups)
        self.unknown = UnknownOrders(spacing_s=b.poll_interval_s)
        self.reconcile_s = min(RECONCILE_MAX_S, RECONCILE_EVERY_POLLS * b.poll_interval_s)
        quiet = min(self.reconcile_s, QUIET_AFTER_POLLS * b.poll_interval_s)
        self.silence = Silence(quiet_s=quiet, unheard_s=min(quiet, UNHEARD_AFTER_POLLS * b.poll_interval_s),
                               max_s=self.reconcile_s)
        self.tickers: list[Ticker] = []
        self.ws_state = "disconnected"
        self.ws_up_since: float | None = None  # monotonic: when this actor learnt of the current connection
        # System start: the first connection is covered by the start-up read (`poll_now`), which follows.
        self.awaiting_startup_read = startup
        self.last_poll_ok: float | None = None  # epoch of the last successful book read
        self.last_read_started: float | None = None  # monotonic
        self.last_read_s = 0.0  # how long it took: fetch, parse and comparison
        self.rechecked_at = float("-inf")  # monotonic: when the open rows were last all compared again
        self.read_wanted = False
        self.reads: dict[str, int] = {}  # successful book reads by reason (diagnostics, tests)
        self.forwarded = 0  # book rows forwarded to the store
        self.idle_polls = 0
        self.by_broker_id: dict[str, str] = {}  # open orders: broker id -> command_id (pushes without remarks)

    def on_start(self):
        self.reader = self.registry.ask("broker", GetReader(), timeout=10)
        if not self.awaiting_startup_read:
            # Restarted by the supervisor: the socket may have connected long ago, and without knowing it this
            # watcher would read the whole book every tick. Its first tick reconciles (no read made yet).
            try:
                if self.registry.ask("broker", IsWsConnected(), timeout=10):
                    self.ws_state, self.ws_up_since = "connected", time.monotonic()
            except Exception as exc:  # noqa: BLE001 - unknown: poll as if the socket were down (safe)
                logger.warning("watcher: WebSocket state unknown after restart ({!r}); polling", exc)
        self.tickers = [
            Ticker(self.actor_ref, self.config.broker.poll_interval_s, "poll").start(),
            Ticker(self.actor_ref, self.config.risk.pnl_poll_interval_s, "positions").start(),
        ]

    def on_stop(self):
        for ticker in self.tickers:
            ticker.stop()

    @property
    def ws_healthy(self) -> bool:
        return self.ws_state == "connected"

    def _on_report(self, message: BrokerOrderReport) -> None:
        if message.origin != "poll":
            command_id = message.remarks or self.by_broker_id.get(message.broker_order_id or "")
            if command_id:
                self.silence.heard(command_id, time.monotonic())
        self.registry.tell("store", message)

    def _on_not_found(self, message: BrokerOrderNotFound) -> None:
        self.suspect_unknown(message.command_id, message.broker_order_id,
                             f"{message.route}: {message.emsg or 'order not found'}")

    def _on_tick(self, message: Tick) -> None:
        if message.name == "poll":
            self.poll_orders()
        elif message.name == "positions":
            self.poll_positions()

    def _on_lookup(self, message: LookUp) -> bool:  # the broker's: an unknown outcome, or a cancel just sent
        if self.ws_healthy and self.last_read_started is not None \
                and time.monotonic() - self.last_read_started < self.config.broker.poll_interval_s:
            self.read_wanted = True  # read again at the next tick: a burst (a flatten's cancels) is one read
        else:
            self.poll_orders(force=True)
        return True

    def _on_poll_now(self, message: PollNow) -> bool:
        self.awaiting_startup_read = False
        if self.ws_healthy and self.last_read_started is not None and self.last_read_started >= self.ws_up_since:
            logger.debug("start-up read skipped: the book was read after the WebSocket connected")
        else:
            self.poll_orders(force=True, reason="start-up")
        return True

    def _on_ws_state(self, message: WsStateChanged) -> None:
        self.ws_state = message.state
        logger.info("broker WebSocket {}", self.ws_state)
        if self.ws_state == "auth_failed":
            self.registry.tell("broker", Relogin())  # the token was refused: a fresh login re-authenticates
        if self.ws_state == "connected":
            self.ws_up_since = time.monotonic()
            if self.awaiting_startup_read:
                logger.debug("WebSocket connected before the start-up read, which will cover it")
            else:
                # Pushes may have been missed while it was down: read everything again, now that the
                # subscription is in place (whatever changes after this read is pushed).
                self.reconciler.filter.forget()
                self.poll_orders(force=True, reason="reconnect")
        else:
            self.ws_up_since = None

    def _on_status(self, message: GetWatcherStatus) -> dict:
        return {"ws": self.ws_state, "last_poll_ok": self.last_poll_ok, "reads": dict(self.reads),
                "forwarded": self.forwarded, "filter_size": len(self.reconciler.filter.seen),
                "unknown_suspects": sorted(self.unknown.suspects)}

    def _read(self, call):
        try:
            return call()
        except SessionExpired:
            logger.warning("broker session expired (seen by the watcher); asking for a new login")
            self.registry.tell("broker", Relogin())
        except BrokerError as exc:
            logger.warning("broker read failed: {}", exc)
        return None

    def _why_read(self, open_rows: list, now: float) -> str | None:
        """With the WebSocket connected: the reason to read the whole book now, or None."""
        if self.read_wanted:
            return "lookup"
        if self.unknown.wants_read(now):
            return "unknown-order"
        wall = time.time()
        if any(r.status == T.SENT_TO_BROKER and not r.broker_order_id
               and wall - _epoch(r.updated_at) >= NO_ID_LOOKUP_AFTER_S for r in open_rows):
            return "unknown-outcome"
        if self.last_read_started is None:
            return "reconcile"
        since = now - self.last_read_started
        if since >= self.reconcile_s and since >= NET_READ_SPACING * self.last_read_s:
            return "reconcile"
        if self.silence.overdue(now):
            return "quiet-order"  # not a book read: one SingleOrdHist each
        return None

    def poll_orders(self, force: bool = False, reason: str | None = None) -> None:
        open_rows = queries.open_at_broker()
        now = time.monotonic()
        self.by_broker_id = {r.broker_order_id: r.command_id for r in open_rows if r.broker_order_id}
        self.silence.track(self.by_broker_id.values(), {r.command_id for r in open_rows}, now)
        if self.unknown.suspects:
            self.unknown.keep_only({c: b for b, c in self.by_broker_id.items()})
            self._confirm_unknown()  # a final check that failed last time: again (at most a few per tick)
        if force:
            reason = reason or "lookup"
        elif self.ws_healthy:
            reason = self._why_read(open_rows, now)
            if reason is None:
                return
            if reason == "quiet-order":
                quiet = self.silence.overdue(now)[:QUIET_LOOKUPS_PER_TICK]
                self._look_up_quiet(quiet, {r.command_id: r.broker_order_id for r in open_rows})
                return
        else:
            self.idle_polls = 0 if open_rows else self.idle_polls + 1
            if not open_rows and self.idle_polls % IDLE_POLL_EVERY:
                return  # nothing of ours open: reconcile (external orders, late adoptions) less often
            reason = "poll"
        self._read_book(open_rows, now, reason)

    def _look_up_quiet(self, command_ids: list[str], broker_ids: dict[str, str]) -> None:
        """SingleOrdHist for each quiet order: its newest state goes through the same comparison as a book row."""
        for command_id in command_ids:
            outcome, history = self._history(broker_ids[command_id])
            self.silence.looked_up(time.monotonic(), (command_id,))  # failed or not: not again at once
            if outcome == "unknown":
                self.suspect_unknown(command_id, broker_ids[command_id], "SingleOrdHist: no such order")
            if outcome != "listed":
                continue  # the next look-up or the reconcile will see it
            self.unknown.found(command_id)
            self._forward_history(command_id, history, "was quiet")

    def _history(self, broker_order_id: str) -> tuple[str, list | None]:
        """SingleOrdHist of one order: ("listed", states) | ("unknown", None) when the broker answered that it has
        no such order | ("failed", None) when the read failed, which proves nothing."""
        try:
            history = self.reader.single_order_history(broker_order_id)
        except SessionExpired:
            logger.warning("broker session expired (seen by the watcher); asking for a new login")
            self.registry.tell("broker", Relogin())
            return "failed", None
        except BrokerError as exc:
            if says_order_unknown(exc):
                return "unknown", None
            logger.warning("broker read failed: {}", exc)
            return "failed", None
        self.reads["order-history"] = self.reads.get("order-history", 0) + 1
        return ("listed", history) if history else ("unknown", None)

    def _forward_history(self, command_id: str, history: list, why: str) -> None:
        """The newest state of a SingleOrdHist goes through the same comparison as a book row."""
        forwarded = self.reconciler.select(history[:1], complete=False)
        self.forwarded += len(forwarded)
        for report in forwarded:
            logger.info("order {} {}: its {} state came from SingleOrdHist", command_id, why, report.status)
            self.registry.tell("store", report)

    # ---- orders the broker no longer knows (BROKER_UNKNOWN_ORDER) -----------------------------------

    def suspect_unknown(self, command_id: str, broker_order_id: str, why: str) -> None:
        """The broker said it has no such order. Only our open orders with this very broker id are checked."""
        row = queries.order_row(command_id)
        if row is None or row["status"] not in T.OPEN_AT_BROKER or row["broker_order_id"] != broker_order_id:
            return  # settled meanwhile (or not ours): nothing to check
        if self.unknown.suspect(command_id, broker_order_id, time.monotonic(), why):
            logger.warning("order {} (broker id {}) unknown to the broker? ({}); checking the books", command_id,
                           broker_order_id, why)

    def _missing_from_book(self, open_rows: list, broker_ids: set[str], remarks: set[str]) -> None:
        """Open orders with a broker id (known before the read began) that a full book read lacks: ask for each
        on its own. A broker that answers `no data` starts the checks; one that lists it settles it."""
        missing = [r for r in open_rows if r.broker_order_id and r.broker_order_id not in broker_ids
                   and r.command_id not in remarks and r.command_id not in self.unknown.suspects]
        for r in missing[:UNKNOWN_LOOKUPS_PER_READ]:
            outcome, history = self._history(r.broker_order_id)
            if outcome == "unknown":
                self.suspect_unknown(r.command_id, r.broker_order_id, "absent from the OrderBook, SingleOrdHist: "
                                     "no such order")
            elif outcome == "listed":
                self._forward_history(r.command_id, history, "is missing from the OrderBook")

    def _confirm_unknown(self) -> None:
        """The final check of the suspects absent from enough book reads: SingleOrdHist. Still no such order ->
        FAILED BROKER_UNKNOWN_ORDER (fills kept); listed -> dropped; the read failed -> again next tick."""
        for command_id in self.unknown.due_history()[:UNKNOWN_LOOKUPS_PER_READ]:
            suspect = self.unknown.suspects[command_id]
            outcome, history = self._history(suspect.broker_order_id)
            if outcome == "failed":
                continue
            if outcome == "listed":
                self.unknown.found(command_id)
                logger.info("order {} is known to the broker after all (SingleOrdHist)", command_id)
                self._forward_history(command_id, history, "was suspected unknown")
                continue
            if not self.unknown.history(command_id, listed=False):
                continue
            logger.error("order {} (broker id {}) is unknown to the broker: {}; absent from {} OrderBook reads and "
                         "from SingleOrdHist: FAILED {}", command_id, suspect.broker_order_id, suspect.why,
                         len(suspect.absent_at), UNKNOWN_TAG)
            self.registry.tell("store", TransitionOrder(
                command_id=command_id, to_status=T.FAILED, expect_from=(T.SENT_TO_BROKER, T.PARTIAL),
                tag=UNKNOWN_TAG, detail=(f"broker id {suspect.broker_order_id} unknown to the broker ({suspect.why}); "
                                         f"absent from {len(suspect.absent_at)} OrderBook reads "
                                         f">= {self.unknown.spacing_s:g}s apart and from SingleOrdHist")[:300]))

    def _read_book(self, open_rows: list, started: float, reason: str) -> None:
        book = self._read(self.reader.order_book_rows)
        if book is None:
            self.read_wanted = True  # whatever this read was for (a reconnection's gap) is still owed: next tick
            return
        self.last_read_started, self.last_poll_ok = started, time.time()
        self.read_wanted = self.awaiting_startup_read = False  # any read after a connection covers it
        self.reads[reason] = self.reads.get(reason, 0) + 1
        if started - self.rechecked_at >= self.reconcile_s:
            self.reconciler.filter.forget_open()  # a full reconcile: nothing is taken on trust for long
            self.rechecked_at = started
        forwarded = self.reconciler.select(book)
        self.forwarded += len(forwarded)
        for report in forwarded:
            self.registry.tell("store", report)  # ours are applied; others are recorded as external
        pending = {r.command_id: _epoch(r.updated_at) for r in open_rows
                   if r.status == T.SENT_TO_BROKER and not r.broker_order_id}
        found = {row.remarks for row in book if row.remarks in pending} if pending else set()
        # Orders the broker may no longer know: which of ours with a broker id are in this complete book.
        # Only our open orders with a broker id are looked for, so the sets stay small with a large book.
        wanted_ids = {r.broker_order_id for r in open_rows if r.broker_order_id}
        wanted_ids.update(s.broker_order_id for s in self.unknown.suspects.values())
        check_unknown = bool(wanted_ids)
        listed_ids: set[str] = set()
        listed_remarks: set[str] = set()
        if check_unknown:
            wanted_remarks = set(self.by_broker_id.values()) | set(self.unknown.suspects)
            for row in book:
                if row.norenordno in wanted_ids:
                    listed_ids.add(row.norenordno)
                if row.remarks in wanted_remarks:
                    listed_remarks.add(row.remarks)
        rows = len(book)
        del book
        if rows >= TRIM_AFTER_ROWS and MALLOC_TRIM is not None:
            MALLOC_TRIM(0)
        self.last_read_s = time.monotonic() - started
        self.silence.looked_up(time.monotonic())
        if reason not in ("poll", "unknown-outcome") or forwarded:
            logger.debug("OrderBook read ({}): {} rows, {} forwarded", reason, rows, len(forwarded))
        for command_id in self.lost.observe(pending, found, time.time()):
            logger.error("order {} not found at the broker after the grace period: LOST_IN_FLIGHT", command_id)
            self.registry.tell("store", TransitionOrder(
                command_id=command_id, to_status="FAILED", expect_from=(T.SENT_TO_BROKER,), tag="LOST_IN_FLIGHT",
                detail="PlaceOrder outcome unknown and not in the OrderBook"))
        if check_unknown:
            for command_id in self.unknown.book_read(started, listed_ids, listed_remarks):
                logger.info("order {} is in the OrderBook: known to the broker after all", command_id)
            self._missing_from_book(open_rows, listed_ids, listed_remarks)
            self._confirm_unknown()

    def poll_positions(self) -> None:
        rows = self._read(self.reader.position_book)
        ok = rows is not None
        snapshot = PositionsSnapshot(rows=tuple(r.model_dump() for r in rows or ()), ok=ok)
        self.registry.tell("risk", snapshot)
        if ok:
            self.registry.tell("guard", snapshot)
