"""GuardActor: steps 2B (position guard) and 2C (duplicate guard), EXIT resolution and the freeze split.

`GuardBook` is the pure core: a per-strategy, direction-aware position ledger built from our own fills, and
the set of our orders in flight. Because one actor's mailbox serializes every check, fifty identical alerts
arriving at once produce exactly one order — no locks.

Freeze split: a leg above its instrument's freeze quantity (known only here for an EXIT, once resolved) is
split by StoreActor, in one transaction, into child orders of whole lots (`split_quantities`), each its own row
linked by `parent_command_id`, sent and reconciled on its own. The children share the alert_id, so the
duplicate check never blocks one with another.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from loguru import logger

from actors.base import SupervisedActor

from actors.instruments import freeze_qty, freeze_table, lot_size_fallback, underlying
from actors.store import has_children, split_family
from messages.commands import (
    AmendExitLeg,
    CancelOrder,
    InstrumentInfo,
    InstrumentQuery,
    Notify,
    PositionsSnapshot,
    RiskCleared,
    SendOrder,
    SplitLeg,
    SplitResult,
    TransitionOrder,
    TransitionResult,
)
from messages.orders import OrderChanged, OrderSnapshot
from storage import transitions as T
from storage.models import Order

PositionKey = tuple[str, str, str, str]  # strategy, exchange, symbol, product
BROKER_PRODUCTS = {"M": "NRML", "I": "MIS", "C": "CNC"}


def split_quantities(quantity: int, freeze: int | None, lot: int | None = None) -> tuple[int, ...]:
    """Chunks of at most `freeze` units, each the largest whole number of lots <= freeze; the remainder last.

    4000 NIFTY (freeze 1800, lot 65): 1755 + 1755 + 490. No freeze, or quantity <= freeze: one chunk. A lot
    larger than the freeze quantity (a misconfiguration) falls back to chunks of exactly the freeze quantity."""
    if not freeze or freeze <= 0 or quantity <= freeze:
        return (quantity,)
    step = lot if lot and lot > 0 else 1
    chunk = (freeze // step) * step or freeze
    full, rest = divmod(quantity, chunk)
    return (chunk,) * full + ((rest,) if rest else ())


def _discard(index: dict, bucket, item) -> None:
    """Remove `item` from `index[bucket]`, dropping the bucket when it empties (the index stays bounded)."""
    members = index.get(bucket)
    if members is not None:
        members.discard(item)
        if not members:
            del index[bucket]


@dataclass(frozen=True)
class InFlight:
    alert_id: str
    strategy: str
    exchange: str
    symbol: str
    side: str
    execution_type: str = "ENTRY"


@dataclass(frozen=True)
class Decision:
    """Either a block tag, or the order to send (with EXIT side/qty/product resolved)."""

    tag: str | None = None
    side: str | None = None
    quantity: int | None = None
    product: str | None = None
    cancel: tuple[str, ...] = ()  # our resting entry orders this EXIT supersedes


@dataclass
class GuardBook:
    positions: dict[PositionKey, int] = field(default_factory=lambda: defaultdict(int))
    # Which alerts built each open position: the other legs of the same alert are not blocked by it.
    position_alerts: dict[PositionKey, set[str]] = field(default_factory=lambda: defaultdict(set))
    in_flight: dict[str, InFlight] = field(default_factory=dict)
    # Indexes over the two maps above, so that a check costs the same with 5 or 5000 open positions.
    _by_strategy: dict[str, set[PositionKey]] = field(default_factory=lambda: defaultdict(set), repr=False)
    _by_instrument: dict[tuple[str, str], set[PositionKey]] = field(default_factory=lambda: defaultdict(set),
                                                                    repr=False)
    _in_flight_by_book: dict[tuple[str, str, str], set[str]] = field(default_factory=lambda: defaultdict(set),
                                                                     repr=False)

    # ---- the ledger -----------------------------------------------------------------------------

    def apply_fill(self, order: OrderSnapshot, delta: int) -> None:
        self._fill((order.strategy_name, order.exchange, order.symbol, order.product), order.side, delta,
                   order.alert_id)

    def _fill(self, key: PositionKey, side: str, delta: int, alert_id: str) -> None:
        if delta == 0:
            return
        self.positions[key] += delta if side == "BUY" else -delta
        self.position_alerts[key].add(alert_id)
        self._by_strategy[key[0]].add(key)
        self._by_instrument[(key[1], key[2])].add(key)
        if self.positions[key] == 0:
            del self.positions[key]
            self.position_alerts.pop(key, None)
            _discard(self._by_strategy, key[0], key)
            _discard(self._by_instrument, (key[1], key[2]), key)

    def on_change(self, change: OrderChanged) -> None:
        self.apply_fill(change.order, change.fill_delta)
        if change.to_status not in T.NON_TERMINAL:
            flight = self.in_flight.pop(change.order.command_id, None)
            if flight is not None:
                _discard(self._in_flight_by_book, (flight.strategy, flight.exchange, flight.symbol),
                         change.order.command_id)

    def strategy_positions(self, strategy: str) -> dict[PositionKey, int]:
        return {k: self.positions[k] for k in self._by_strategy.get(strategy, ()) if self.positions.get(k)}

    # ---- the checks -----------------------------------------------------------------------------

    def _same_book(self, order: OrderSnapshot) -> dict[str, InFlight]:
        """In-flight orders of the same strategy and instrument from other alerts."""
        ids = self._in_flight_by_book.get((order.strategy_name, order.exchange, order.symbol), ())
        return {cid: self.in_flight[cid] for cid in ids if self.in_flight[cid].alert_id != order.alert_id}

    def _open_order_exists(self, order: OrderSnapshot) -> bool:
        return bool(self._same_book(order))

    def evaluate(self, order: OrderSnapshot) -> Decision:
        if order.execution_type == "ENTRY":
            if any(self.position_alerts.get(key, set()) - {order.alert_id}
                   for key in self.strategy_positions(order.strategy_name)):
                return Decision(tag="GUARD_BLOCKED:STRATEGY_HAS_POSITION")
            want = 1 if order.side == "BUY" else -1
            for key in self._by_instrument.get((order.exchange, order.symbol), ()):
                if key[0] != order.strategy_name and self.positions.get(key, 0) * want < 0:
                    return Decision(tag="GUARD_BLOCKED:CROSS_STRATEGY_CONFLICT")
            if self._open_order_exists(order):
                return Decision(tag="DUPLICATE_BLOCKED:OPEN_ORDER_EXISTS")
            return Decision(side=order.side, quantity=order.quantity, product=order.product)

        # An EXIT supersedes the strategy's resting entries on this instrument: cancel them, so nothing
        # fills after the trader asked to be out. Another EXIT in flight is still a duplicate.
        same = self._same_book(order)
        entries = tuple(sorted(cid for cid, f in same.items() if f.execution_type == "ENTRY"))
        if any(f.execution_type == "EXIT" for f in same.values()):
            return Decision(tag="DUPLICATE_BLOCKED:OPEN_ORDER_EXISTS")
        held = {k: v for k, v in self.strategy_positions(order.strategy_name).items()
                if k[1] == order.exchange and k[2] == order.symbol}
        if not held:
            return Decision(tag="GUARD_BLOCKED:NO_POSITION", cancel=entries)
        same_product = [k for k in sorted(held) if k[3] == order.product]
        key = same_product[0] if same_product else max(sorted(held), key=lambda k: abs(held[k]))
        net = held[key]
        quantity = abs(net) if order.quantity <= 0 else min(abs(net), order.quantity)
        return Decision(side="SELL" if net > 0 else "BUY", quantity=quantity, product=key[3], cancel=entries)

    def admit(self, order: OrderSnapshot) -> None:
        self._admit(order.command_id, InFlight(order.alert_id, order.strategy_name, order.exchange, order.symbol,
                                               order.side, order.execution_type))

    def _admit(self, command_id: str, flight: InFlight) -> None:
        self.in_flight[command_id] = flight
        self._in_flight_by_book[(flight.strategy, flight.exchange, flight.symbol)].add(command_id)

    # ---- checking against the broker ------------------------------------------------------------

    def mismatches(self, broker_rows) -> dict[tuple[str, str, str], tuple[int, int]]:
        """(exchange, symbol, product) -> (our net over all strategies, broker netqty) where they differ.

        Symbols with one of our orders in flight are skipped: their fills may be on one side only for a moment.
        The ledger is never changed from the broker's account-wide numbers (that would wipe other strategies).
        """
        ours: dict[tuple[str, str, str], int] = defaultdict(int)
        for (_strategy, exch, symbol, product), qty in self.positions.items():
            ours[(exch, symbol, product)] += qty
        theirs: dict[tuple[str, str, str], int] = defaultdict(int)
        for row in broker_rows:
            product = BROKER_PRODUCTS.get(str(row.get("prd") or ""), str(row.get("prd") or ""))
            theirs[(str(row.get("exch") or ""), str(row.get("tsym") or ""), product)] += int(row.get("netqty") or 0)
        busy = {(f.exchange, f.symbol) for f in self.in_flight.values()}
        out = {}
        for key in set(ours) | set(theirs):
            if (key[0], key[1]) in busy:
                continue
            if ours.get(key, 0) != theirs.get(key, 0):
                out[key] = (ours.get(key, 0), theirs.get(key, 0))
        return out

    # ---- rebuilding from the database -----------------------------------------------------------

    @classmethod
    def from_database(cls) -> "GuardBook":
        """Replay our fills in order (plain tuples: a day of 100,000 orders rebuilds in well under a second)."""
        book = cls()
        open_statuses = sorted(T.OPEN_AT_BROKER)
        marks = ", ".join("?" for _ in open_statuses)
        cursor = Order._meta.database.execute_sql(
            "SELECT command_id, alert_id, strategy_name, exchange, symbol, product, side, execution_type, "
            f"filled_qty, status FROM orders WHERE filled_qty > 0 OR status IN ({marks}) ORDER BY id",
            open_statuses)
        for (command_id, alert_id, strategy, exchange, symbol, product, side, execution_type, filled,
             status) in cursor:
            book._fill((strategy, exchange, symbol, product), side, filled or 0, alert_id)
            if status in T.OPEN_AT_BROKER:
                book._admit(command_id, InFlight(alert_id, strategy, exchange, symbol, side, execution_type))
        return book


class GuardActor(SupervisedActor):
    registry_name = "guard"

    def __init__(self, registry):
        super().__init__(registry)
        self.book = GuardBook()
        self.suspect: dict = {}  # mismatches seen once; reported when seen twice in a row
        self.reported: dict = {}
        self.freeze: dict[str, int] | None = None  # the broker's freeze table (built-in + [broker] freeze_qty)

    def on_start(self):
        self.book = GuardBook.from_database()
        logger.info("guard ledger: {} positions, {} orders in flight", len(self.book.positions),
                    len(self.book.in_flight))

    def handle(self, message):
        if isinstance(message, RiskCleared):
            for order in message.orders:
                self._check(order)
            return None
        if isinstance(message, OrderChanged):
            self.book.on_change(message)
            return None
        if isinstance(message, PositionsSnapshot):
            self._check_against_broker(message.rows)
            return None
        if message == "ledger":
            return {"positions": {"|".join(k): v for k, v in self.book.positions.items()},
                    "in_flight": sorted(self.book.in_flight)}
        return None

    def _check_against_broker(self, rows) -> None:
        found = self.book.mismatches(rows)
        confirmed = {k: v for k, v in found.items() if self.suspect.get(k) == v}
        self.suspect = found
        for key, (ours, theirs) in confirmed.items():
            if self.reported.get(key) == (ours, theirs):
                continue
            exch, symbol, product = key
            logger.bind(event="ledger_mismatch", symbol=symbol, ours=ours, broker=theirs).error(
                "ledger mismatch on {} {} {}: our strategies hold {}, the broker shows {}; not changed, "
                "operator to check", exch, symbol, product, ours, theirs)
            self.registry.tell("notifier", Notify(kind="ledger", text=f"Position mismatch {exch} {symbol} "
                                                  f"{product}: ours {ours}, broker {theirs}. Please check."))
        self.reported = {k: v for k, v in self.reported.items() if k in found}
        self.reported.update(confirmed)

    def _block(self, order: OrderSnapshot, tag: str) -> None:
        self.registry.tell("store", TransitionOrder(command_id=order.command_id, to_status="FAILED",
                                                    expect_from=("CREATED",), tag=tag))

    def _check(self, order: OrderSnapshot) -> None:
        decision = self.book.evaluate(order)
        for command_id in decision.cancel:
            logger.info("EXIT {} cancels resting entry {}", order.command_id, command_id)
            self.registry.tell("broker", CancelOrder(command_id=command_id, reason=f"superseded by EXIT "
                                                                                   f"{order.command_id}"))
        if decision.tag:
            self._block(order, decision.tag)
            return
        if (decision.side, decision.quantity, decision.product) != (order.side, order.quantity, order.product):
            result: TransitionResult = self.registry.ask("store", AmendExitLeg(
                command_id=order.command_id, side=decision.side, quantity=decision.quantity,
                product=decision.product))
            if result.reason == "ALREADY_SPLIT":
                logger.warning("exit leg {} was already resolved and split (a retried check): sending what is "
                               "still CREATED", order.command_id)
                self._send(self._resume_split(order.command_id))
                return
            if not result.applied or result.order is None:
                logger.warning("exit leg {} could not be resolved (no longer CREATED)", order.command_id)
                return
            order = result.order
        self._send(self._split(order))

    def _send(self, orders: tuple[OrderSnapshot, ...]) -> None:
        for order in orders:
            self.book.admit(order)
        for order in orders:
            self.registry.tell("broker", SendOrder(order=order))

    # ---- the freeze split -------------------------------------------------------------------------

    def _freeze_table(self) -> dict[str, int]:
        if self.freeze is None:
            try:
                self.freeze = self.registry.ask("broker", "freeze_table", timeout=5)
            except Exception as exc:  # noqa: BLE001 - the built-in table until the broker answers
                logger.warning("guard: no freeze table from the broker ({!r}); using the built-in one", exc)
                return freeze_table()
        return self.freeze

    def _lot(self, order: OrderSnapshot) -> int | None:
        """The broker's lot size (SearchScrip, cached by BrokerActor), else the built-in table."""
        try:
            info: InstrumentInfo = self.registry.ask("broker", InstrumentQuery(exchange=order.exchange,
                                                                               symbol=order.symbol), timeout=10)
            if info.lot_size:
                return info.lot_size
        except Exception as exc:  # noqa: BLE001 - fall back to the table
            logger.warning("guard: lot size of {} {} unknown to the broker ({!r})", order.exchange, order.symbol,
                           exc)
        return lot_size_fallback(order.exchange, order.symbol)

    def _split(self, order: OrderSnapshot) -> tuple[OrderSnapshot, ...]:
        """The orders to send for this leg: itself, or itself and its children when above the freeze qty."""
        if order.parent_command_id or underlying(order.exchange, order.symbol) is None:
            return (order,)  # a child is at most one freeze quantity; equities have none
        limit = freeze_qty(order.exchange, order.symbol, self._freeze_table())
        if limit is None or order.quantity <= limit:
            return (order,)
        lot = self._lot(order)
        quantities = split_quantities(order.quantity, limit, lot)
        try:
            result: SplitResult = self.registry.ask("store", SplitLeg(command_id=order.command_id,
                                                                      quantities=quantities), timeout=10)
        except Exception as exc:  # noqa: BLE001 - whatever the store did, read it back
            logger.error("split of {} not confirmed ({!r}); reading back what the store has", order.command_id, exc)
            return self._resume_split(order.command_id)
        if result.applied:
            logger.info("{} {} {} {} above the freeze quantity {} (lot {}): sent as {}", order.command_id,
                        order.side, order.quantity, order.symbol, limit, lot,
                        " + ".join(f"{o.quantity} ({o.command_id})" for o in result.orders))
            return result.orders
        if result.reason == "ALREADY_SPLIT":
            logger.warning("{} was already split (a retried check): sending what is still CREATED",
                           order.command_id)
            return result.orders
        if result.reason == "QUANTITIES_DO_NOT_ADD_UP":
            logger.error("split of {} refused: the row's quantity is not {} any more", order.command_id,
                         order.quantity)
            self._block(order, "GUARD_BLOCKED:SPLIT_FAILED")
            return ()
        logger.warning("split of {} not applied: {}", order.command_id, result.reason)
        return ()

    def _resume_split(self, command_id: str) -> tuple[OrderSnapshot, ...]:
        try:
            self.registry.ask("store", "sync", timeout=30)  # every earlier write applied
        except Exception as exc:  # noqa: BLE001
            logger.error("store not answering ({!r}); {} left for restart recovery", exc, command_id)
            return ()
        family = split_family(command_id)
        if has_children(command_id):
            return family  # split: the parent and the children that are still CREATED
        if family:  # never split and still CREATED: it is above the freeze quantity, do not send it whole
            self._block(family[0], "GUARD_BLOCKED:SPLIT_FAILED")
        return ()
