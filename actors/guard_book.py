"""The guard's pure core: the per-strategy position ledger, the orders in flight, the checks of steps 2B/2C,
EXIT resolution sized by the broker's truth, and the ordering of an alert's legs. No I/O: GuardActor feeds it.

- `GuardBook` is a direction-aware ledger built from our own fills (plus write-offs the broker's truth forced),
  and the set of our orders in flight. One actor's mailbox serializes every check, so fifty identical alerts
  arriving at once produce exactly one order — no locks.
- `BrokerPositions` is a PositionBook read plus our fills since it was taken: what the broker holds now.
- An EXIT is capped at min(the strategy's ledger, the broker's net position in that instrument and product in
  the exit's direction minus our exits already sent and not yet filled there): it never takes the broker's net
  quantity across zero, and what the broker no longer holds is written off the ledger.
- `plan_entry` / `plan_exit` decide an alert as a whole: a spread's ENTRY legs go together or not at all (BUY
  legs first); in an EXIT, buy-backs of shorts go before the sells of the long wings of the same underlying.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from actors.instruments import underlying
from messages.orders import OrderChanged, OrderSnapshot
from storage import transitions as T

PositionKey = tuple[str, str, str, str]  # strategy, exchange, symbol, product
BookKey = tuple[str, str, str]  # exchange, symbol, product (the broker's PositionBook granularity)
BROKER_PRODUCTS = {"M": "NRML", "I": "MIS", "C": "CNC"}
BLOCKER_PREFIXES = ("VALIDATION_FAILED", "RISK_BLOCKED", "GUARD_BLOCKED", "DUPLICATE_BLOCKED")
# Exit legs with nothing to exit: they never hold the other legs of their alert.
NOTHING_TO_EXIT = ("GUARD_BLOCKED:NO_POSITION", "GUARD_BLOCKED:BROKER_FLAT")
OTHER_LEG_BLOCKED = "OTHER_LEG_BLOCKED"


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


def alert_group(order: OrderSnapshot) -> str:
    """The key that ties an alert's legs together: the service's alert_key (the sender's alert_id only for rows
    written before alert keys existed)."""
    return order.alert_key or order.alert_id


def product_name(prd) -> str:
    text = str(prd or "").upper()
    return BROKER_PRODUCTS.get(text, text)


def other_leg_tag(tag: str) -> str:
    """`GUARD_BLOCKED:CROSS_STRATEGY_CONFLICT` -> `GUARD_BLOCKED:OTHER_LEG_BLOCKED`."""
    return f"{tag.split(':', 1)[0]}:{OTHER_LEG_BLOCKED}"


def is_blocker_tag(tag: str | None) -> bool:
    """A leg refused by a blocker before anything was sent (as opposed to one that failed at or after the send)."""
    return bool(tag) and (tag.startswith(BLOCKER_PREFIXES) or tag.endswith(f":{OTHER_LEG_BLOCKED}"))


def same_underlying(order: OrderSnapshot) -> tuple[str, str]:
    """Legs of one underlying (NIFTY options of a condor); an equity is its own underlying."""
    return order.exchange, underlying(order.exchange, order.symbol) or order.symbol


def _discard(index: dict, bucket, item) -> None:
    """Remove `item` from `index[bucket]`, dropping the bucket when it empties (the index stays bounded)."""
    members = index.get(bucket)
    if members is not None:
        members.discard(item)
        if not members:
            del index[bucket]


@dataclass(frozen=True)
class InFlight:
    alert_id: str  # the alert group (alert_key)
    strategy: str
    exchange: str
    symbol: str
    side: str
    execution_type: str = "ENTRY"
    product: str = ""
    quantity: int = 0


@dataclass(frozen=True)
class Decision:
    """Either a block tag, or the order to send (with EXIT side/qty/product resolved)."""

    tag: str | None = None
    side: str | None = None
    quantity: int | None = None
    product: str | None = None
    cancel: tuple[str, ...] = ()  # our resting entry orders this EXIT supersedes
    write_off: int = 0  # units of the strategy's position the broker no longer holds (toward zero)
    position: PositionKey | None = None  # the ledger position an EXIT resolved to
    note: str | None = None  # how the exit was sized, for its event


@dataclass
class BrokerPositions:
    """The broker's net position per (exchange, symbol, product): a PositionBook read plus our fills since the
    read began. A fill reported between the read's start and its reply may be counted twice; for an exit fill
    that only lowers what a later exit may send, and an entry fill is capped by the ledger anyway."""

    net: dict[BookKey, int] = field(default_factory=dict)
    read_at: float = float("-inf")  # time.monotonic() when the read began
    since: dict[BookKey, int] = field(default_factory=lambda: defaultdict(int))

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping], read_at: float) -> "BrokerPositions":
        net: dict[BookKey, int] = defaultdict(int)
        for row in rows:
            key = (str(row.get("exch") or ""), str(row.get("tsym") or ""), product_name(row.get("prd")))
            net[key] += int(row.get("netqty") or 0)
        return cls(net=dict(net), read_at=read_at)

    def apply_fill(self, order: OrderSnapshot, delta: int) -> None:
        if delta:
            self.since[(order.exchange, order.symbol, order.product)] += delta if order.side == "BUY" else -delta

    def net_of(self, key: BookKey) -> int:
        return self.net.get(key, 0) + self.since.get(key, 0)


@dataclass
class GuardBook:
    positions: dict[PositionKey, int] = field(default_factory=lambda: defaultdict(int))
    # Which alerts built each open position: the other legs of the same alert are not blocked by it.
    position_alerts: dict[PositionKey, set[str]] = field(default_factory=lambda: defaultdict(set))
    in_flight: dict[str, InFlight] = field(default_factory=dict)
    # Units of our in-flight EXIT orders not filled yet, by command_id (what the broker will still take off).
    exit_unfilled: dict[str, int] = field(default_factory=dict)
    # Indexes over the maps above, so that a check costs the same with 5 or 5000 open positions.
    _by_strategy: dict[str, set[PositionKey]] = field(default_factory=lambda: defaultdict(set), repr=False)
    _by_instrument: dict[tuple[str, str], set[PositionKey]] = field(default_factory=lambda: defaultdict(set),
                                                                    repr=False)
    _in_flight_by_book: dict[tuple[str, str, str], set[str]] = field(default_factory=lambda: defaultdict(set),
                                                                     repr=False)
    _exits_by_instrument: dict[tuple[str, str, str, str], set[str]] = field(
        default_factory=lambda: defaultdict(set), repr=False)  # (exch, symbol, product, side) -> command_ids

    # ---- the ledger -----------------------------------------------------------------------------

    def apply_fill(self, order: OrderSnapshot, delta: int) -> None:
        self._fill((order.strategy_name, order.exchange, order.symbol, order.product), order.side, delta,
                   alert_group(order))

    def _fill(self, key: PositionKey, side: str, delta: int, alert_id: str) -> None:
        if delta == 0:
            return
        self.adjust(key, delta if side == "BUY" else -delta, alert_id)

    def adjust(self, key: PositionKey, signed: int, alert_id: str | None = None) -> None:
        """Move a strategy's net quantity by `signed` units (a fill, or a write-off)."""
        if signed == 0:
            return
        self.positions[key] += signed
        if alert_id is not None:
            self.position_alerts[key].add(alert_id)
        self._by_strategy[key[0]].add(key)
        self._by_instrument[(key[1], key[2])].add(key)
        if self.positions[key] == 0:
            del self.positions[key]
            self.position_alerts.pop(key, None)
            _discard(self._by_strategy, key[0], key)
            _discard(self._by_instrument, (key[1], key[2]), key)

    def on_change(self, change: OrderChanged) -> None:
        order = change.order
        self.apply_fill(order, change.fill_delta)
        cid = order.command_id
        if cid in self.exit_unfilled:
            self.exit_unfilled[cid] = max(0, order.quantity - order.filled_qty)
        if change.to_status not in T.NON_TERMINAL:
            self.release(cid)

    def strategy_positions(self, strategy: str) -> dict[PositionKey, int]:
        return {k: self.positions[k] for k in self._by_strategy.get(strategy, ()) if self.positions.get(k)}

    def held(self, order: OrderSnapshot) -> tuple[PositionKey, int] | None:
        """The strategy's position an EXIT leg closes: same product if held, else the largest; None if flat."""
        held = {k: v for k, v in self.strategy_positions(order.strategy_name).items()
                if k[1] == order.exchange and k[2] == order.symbol}
        if not held:
            return None
        same_product = [k for k in sorted(held) if k[3] == order.product]
        key = same_product[0] if same_product else max(sorted(held), key=lambda k: abs(held[k]))
        return key, held[key]

    def exits_unfilled(self, exchange: str, symbol: str, product: str, side: str) -> int:
        """Units our exits already sent in this instrument, product and direction will still take off."""
        ids = self._exits_by_instrument.get((exchange, symbol, product, side), ())
        return sum(self.exit_unfilled.get(cid, 0) for cid in ids)

    # ---- the checks -----------------------------------------------------------------------------

    def _same_book(self, order: OrderSnapshot) -> dict[str, InFlight]:
        """In-flight orders of the same strategy and instrument from other alerts."""
        ids = self._in_flight_by_book.get((order.strategy_name, order.exchange, order.symbol), ())
        group = alert_group(order)
        return {cid: self.in_flight[cid] for cid in ids if self.in_flight[cid].alert_id != group}

    def _open_order_exists(self, order: OrderSnapshot) -> bool:
        return bool(self._same_book(order))

    def evaluate(self, order: OrderSnapshot, broker: BrokerPositions | None = None) -> Decision:
        """One leg against the ledger. An EXIT is sized by `broker` when given (the broker's truth), else by the
        ledger alone."""
        if order.execution_type == "ENTRY":
            group = alert_group(order)
            if any(self.position_alerts.get(key, set()) - {group}
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
        found = self.held(order)
        if found is None:
            return Decision(tag="GUARD_BLOCKED:NO_POSITION", cancel=entries)
        key, net = found
        side = "SELL" if net > 0 else "BUY"
        wanted = abs(net) if order.quantity <= 0 else min(abs(net), order.quantity)
        if broker is None:
            return Decision(side=side, quantity=wanted, product=key[3], cancel=entries, position=key,
                            note="sized by own ledger: broker position unknown")
        book_net = broker.net_of((key[1], key[2], key[3]))
        in_direction = max(0, book_net) if net > 0 else max(0, -book_net)
        pending = self.exits_unfilled(key[1], key[2], key[3], side)
        available = max(0, in_direction - pending)
        write_off = max(0, abs(net) - available)
        note = (f"broker holds {in_direction} ({book_net:+d} net), our unfilled exits {pending}, "
                f"ledger {net:+d}")
        if available == 0:
            return Decision(tag="GUARD_BLOCKED:BROKER_FLAT", cancel=entries, write_off=write_off, position=key,
                            note=note)
        return Decision(side=side, quantity=min(wanted, available), product=key[3], cancel=entries,
                        write_off=write_off, position=key, note=note)

    def admit(self, order: OrderSnapshot) -> None:
        self._admit(order.command_id, InFlight(alert_group(order), order.strategy_name, order.exchange,
                                               order.symbol, order.side, order.execution_type, order.product,
                                               order.quantity), order.filled_qty)

    def release(self, command_id: str) -> None:
        """Forget an order in flight: it ended, or will not be sent after all (blocked, or re-admitted as its
        split pieces)."""
        flight = self.in_flight.pop(command_id, None)
        self.exit_unfilled.pop(command_id, None)
        if flight is not None:
            _discard(self._in_flight_by_book, (flight.strategy, flight.exchange, flight.symbol), command_id)
            _discard(self._exits_by_instrument, (flight.exchange, flight.symbol, flight.product, flight.side),
                     command_id)

    def _admit(self, command_id: str, flight: InFlight, filled: int = 0) -> None:
        self.in_flight[command_id] = flight
        self._in_flight_by_book[(flight.strategy, flight.exchange, flight.symbol)].add(command_id)
        if flight.execution_type == "EXIT":
            self.exit_unfilled[command_id] = max(0, flight.quantity - filled)
            self._exits_by_instrument[(flight.exchange, flight.symbol, flight.product, flight.side)].add(command_id)

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
            theirs[(str(row.get("exch") or ""), str(row.get("tsym") or ""), product_name(row.get("prd")))] += \
                int(row.get("netqty") or 0)
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
    def from_rows(cls, orders: Iterable[tuple], adjustments: Iterable[tuple] = ()) -> "GuardBook":
        """Replay our fills in order, then the write-offs (plain tuples: a day of 100,000 orders rebuilds in well
        under a second). `orders`: (command_id, alert_group, strategy, exchange, symbol, product, side,
        execution_type, quantity, filled_qty, status); `adjustments`: (strategy, exchange, symbol, product, qty)."""
        book = cls()
        for (command_id, group, strategy, exchange, symbol, product, side, execution_type, quantity, filled,
             status) in orders:
            book._fill((strategy, exchange, symbol, product), side, filled or 0, group)
            if status in T.OPEN_AT_BROKER:
                book._admit(command_id, InFlight(group, strategy, exchange, symbol, side, execution_type, product,
                                                 quantity), filled or 0)
        for strategy, exchange, symbol, product, quantity in adjustments:
            book.adjust((strategy, exchange, symbol, product), quantity)
        return book


# ---- an alert as a whole ---------------------------------------------------------------------------------

@dataclass
class AlertPlan:
    """What to do with the legs of one alert, decided together."""

    blocked: dict[str, str] = field(default_factory=dict)  # command_id -> tag
    details: dict[str, str] = field(default_factory=dict)  # command_id -> event detail for the block
    send: list[tuple[OrderSnapshot, Decision]] = field(default_factory=list)  # in sending order
    hold: list[OrderSnapshot] = field(default_factory=list)  # EXIT wings waiting for their buy-backs
    wait_for: set[str] = field(default_factory=set)  # the buy-backs they wait for (command_ids)
    write_offs: list[tuple[OrderSnapshot, Decision]] = field(default_factory=list)
    supersede: dict[str, str] = field(default_factory=dict)  # resting entry to cancel -> the EXIT that did

    def decided(self, leg: OrderSnapshot, decision: Decision) -> None:
        for cid in decision.cancel:
            self.supersede.setdefault(cid, leg.command_id)
        if decision.write_off:
            self.write_offs.append((leg, decision))


def plan_entry(book: GuardBook, legs: list[OrderSnapshot]) -> AlertPlan:
    """The ENTRY legs of one alert pass together or not at all: one leg blocked blocks every other leg
    (`<BLOCKER>:OTHER_LEG_BLOCKED`). Passed legs are sent BUY first (the broker's hedge margin needs the long)."""
    plan = AlertPlan()
    decisions = [(leg, book.evaluate(leg)) for leg in legs]
    first = next(((leg, d) for leg, d in decisions if d.tag), None)
    if first is not None:
        culprit, why = first
        for leg, decision in decisions:
            plan.blocked[leg.command_id] = decision.tag or other_leg_tag(why.tag)
            if not decision.tag:
                plan.details[leg.command_id] = f"leg {culprit.command_id} blocked: {why.tag}"
        return plan
    plan.send = sorted(decisions, key=lambda ld: (ld[0].side != "BUY", ld[0].leg_index))
    return plan


def plan_exit(book: GuardBook, legs: list[OrderSnapshot], broker: BrokerPositions | None,
              siblings: Iterable[OrderSnapshot] = ()) -> AlertPlan:
    """The EXIT legs of one alert. Legs that buy back a short go first; the legs that sell a long (the wings) of
    the same underlying wait until those buy-backs have filled, and are refused (`<BLOCKER>:OTHER_LEG_BLOCKED`)
    when a buy-back cannot go for any reason but "nothing to buy back". `siblings`: the alert's other legs not
    in `legs` (already sent or failed earlier, e.g. before a restart)."""
    plan = AlertPlan()
    shorts_by_underlying: dict[tuple[str, str], list[OrderSnapshot]] = defaultdict(list)
    wings: list[OrderSnapshot] = []
    others: list[OrderSnapshot] = []
    for leg in legs:
        found = book.held(leg)
        if found is not None and found[1] > 0:
            wings.append(leg)
        else:
            others.append(leg)  # buy-backs, and legs with nothing held (refused below)
    # Buy-backs first, each on its own: covering a short is never held back.
    blocked_buybacks: dict[tuple[str, str], tuple[str, str]] = {}
    for leg in others:
        decision = book.evaluate(leg, broker)
        plan.decided(leg, decision)
        if decision.tag:
            plan.blocked[leg.command_id] = decision.tag
            if decision.tag not in NOTHING_TO_EXIT:
                blocked_buybacks.setdefault(same_underlying(leg), (leg.command_id, decision.tag))
            continue
        plan.send.append((leg, decision))
        book.admit(leg.model_copy(update={"side": decision.side, "quantity": decision.quantity,
                                          "product": decision.product}))  # counted for the next leg's cap
        shorts_by_underlying[same_underlying(leg)].append(leg)
    for sibling in siblings:  # buy-backs of the same alert handled before (a restart, a retried check)
        if sibling.side != "BUY" or sibling.execution_type != "EXIT":
            continue
        if sibling.status in T.NON_TERMINAL:
            shorts_by_underlying[same_underlying(sibling)].append(sibling)
        elif sibling.status == T.FAILED and sibling.tag not in NOTHING_TO_EXIT:
            blocked_buybacks.setdefault(same_underlying(sibling), (sibling.command_id, sibling.tag or "FAILED"))
    for leg in wings:
        under = same_underlying(leg)
        if under in blocked_buybacks:
            cid, tag = blocked_buybacks[under]
            plan.blocked[leg.command_id] = other_leg_tag(tag if is_blocker_tag(tag) else "GUARD_BLOCKED")
            plan.details[leg.command_id] = f"buy-back {cid} of the same underlying could not go: {tag}"
        elif shorts_by_underlying.get(under):
            plan.hold.append(leg)
            plan.wait_for.update(o.command_id for o in shorts_by_underlying[under])
        else:
            decision = book.evaluate(leg, broker)
            plan.decided(leg, decision)
            if decision.tag:
                plan.blocked[leg.command_id] = decision.tag
            else:
                plan.send.append((leg, decision))
                book.admit(leg.model_copy(update={"side": decision.side, "quantity": decision.quantity,
                                                  "product": decision.product}))
    return plan
