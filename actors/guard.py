"""GuardActor: steps 2B (position guard) and 2C (duplicate guard), EXIT resolution and the freeze split.

The plain logic is in actors/guard_book.py: the ledger (`GuardBook`), the broker's truth (`BrokerPositions`),
and the alert-level plans (`plan_entry`, `plan_exit`). This actor feeds them and carries the plans out:

- The ENTRY legs of one alert pass together or not at all, and go to the broker as one `SendLegs(together)`,
  BUY legs first; the broker prices every leg before it claims any.
- An EXIT is sized by the broker's truth: a PositionBook no older than BROKER_TRUTH_MAX_AGE_S (read here when
  older) plus our fills since. What the broker no longer holds is written off the strategy's ledger (a
  `ledger_adjustments` row, an event on the exit, a notification). When no PositionBook can be read the exit is
  sized by the ledger alone, and you are told: an exit is never blocked by a failing read.
- In an EXIT alert the legs that buy back shorts go first; the wings of the same underlying are held (an event
  "held: ...") until those buy-backs have filled, and refused if one cannot go.
- A spread found one-legged after the send (a leg rejected while another went out) is reported loudly and, with
  `[risk] one_legged = "exit"`, its open legs are cancelled and its filled legs exited.

Freeze split: a leg above its instrument's freeze quantity (known only here for an EXIT, once resolved) is
split by StoreActor, in one transaction, into child orders of whole lots (`split_quantities`), each its own row
linked by `parent_command_id`, sent and reconciled on its own. The children share the alert_key, so the
duplicate check never blocks one with another.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field

from loguru import logger

from actors.base import SupervisedActor
from actors.guard_book import (
    NOTHING_TO_EXIT,
    AlertPlan,
    BrokerPositions,
    Decision,
    GuardBook,
    InFlight,
    alert_group,
    is_blocker_tag,
    plan_entry,
    plan_exit,
    split_quantities,
)
from actors.instruments import freeze_qty, freeze_table, lot_size_fallback, underlying
from messages.commands import (
    AmendExitLeg,
    CancelOrder,
    InstrumentInfo,
    InstrumentQuery,
    NoteOrder,
    Notify,
    PositionsSnapshot,
    RegisterAlert,
    RegisterResult,
    RiskCleared,
    SendLegs,
    SplitLeg,
    SplitResult,
    TransitionOrder,
    TransitionResult,
    WriteOffPosition,
)
from messages.broker import GetFreezeTable, GetReader
from messages.control import GetLedger
from messages.orders import NewOrder, OrderChanged, OrderSnapshot, new_command_id
from messages.store import Sync
from storage import queries
from storage import transitions as T

__all__ = ["GuardActor", "GuardBook", "InFlight", "split_quantities"]

BROKER_TRUTH_MAX_AGE_S = 2.0  # an exit is sized on a PositionBook no older than this (plus our fills since)
HELD = "held:"  # event detail prefix of an EXIT wing waiting for its buy-backs


@dataclass
class HeldWings:
    """EXIT wings of one alert waiting for the buy-backs of their underlying to fill."""

    wings: dict[str, OrderSnapshot] = field(default_factory=dict)
    wait_for: set[str] = field(default_factory=set)


class GuardActor(SupervisedActor):
    registry_name = "guard"
    HANDLERS = {
        RiskCleared: "_on_risk_cleared",
        OrderChanged: "_on_order_changed",
        PositionsSnapshot: "_on_positions",
        GetLedger: "_on_ledger",
    }

    def __init__(self, registry, config=None, *, startup: bool = False):
        super().__init__(registry)
        self.config = config
        self.startup = startup
        self.book = GuardBook()
        self.suspect: dict = {}  # mismatches seen once; reported when seen twice in a row
        self.reported: dict = {}
        self.freeze: dict[str, int] | None = None  # the broker's freeze table (built-in + [broker] freeze_qty)
        self.broker: BrokerPositions | None = None  # the last PositionBook this actor read, plus fills since
        self.reader = None
        self.held: dict[str, HeldWings] = {}  # alert group -> wings waiting for buy-backs
        self.one_legged: set[str] = set()  # alert groups already reported one-legged
        self.undoing: dict[str, set[str]] = {}  # one_legged = "exit": group -> its legs that went out

    def on_start(self):
        self.book = GuardBook.from_rows(queries.guard_ledger_rows(), queries.ledger_adjustment_rows())
        logger.info("guard ledger: {} positions, {} orders in flight", len(self.book.positions),
                    len(self.book.in_flight))
        if self.startup:
            return  # recovery dispatches every CREATED leg, held wings included
        # A guard restarted by the supervisor: wings it held wait again (their buy-backs' outcome is in the
        # database).
        held = [OrderSnapshot.model_validate(o) for o in queries.created_orders_with_event(HELD)]
        for group, legs in _by_group(held).items():
            self._check_exits(legs)

    def _on_risk_cleared(self, message: RiskCleared) -> None:
        for legs in _by_group(message.orders).values():
            self._check_alert(legs)

    def _on_order_changed(self, message: OrderChanged) -> None:
        self.book.on_change(message)
        if self.broker is not None:
            self.broker.apply_fill(message.order, message.fill_delta)
        if message.to_status not in T.NON_TERMINAL:
            self._release_wings(message.order)
            if alert_group(message.order) in self.undoing:
                self._undo(alert_group(message.order))
        if message.to_status == T.FAILED and message.from_status != T.FAILED:
            self._watch_one_legged(message.order)

    def _on_positions(self, message: PositionsSnapshot) -> None:
        self._check_against_broker(message.rows)

    def _on_ledger(self, message: GetLedger) -> dict:
        return {"positions": {"|".join(k): v for k, v in self.book.positions.items()},
                "in_flight": sorted(self.book.in_flight)}

    # ---- the broker's truth ---------------------------------------------------------------------

    def _broker_truth(self) -> BrokerPositions | None:
        """The broker's positions no older than BROKER_TRUTH_MAX_AGE_S (read now if older), or None when no
        PositionBook can be read."""
        if self.broker is not None and time.monotonic() - self.broker.read_at <= BROKER_TRUTH_MAX_AGE_S:
            return self.broker
        started = time.monotonic()
        try:
            if self.reader is None:
                self.reader = self.registry.ask("broker", GetReader(), timeout=5)
            rows = [r.model_dump() for r in self.reader.position_book()]
        except Exception as exc:  # noqa: BLE001 - an exit is never blocked by a failing read
            logger.warning("guard: PositionBook unreadable ({}); exits are sized by our own ledger", exc)
            self.reader = None  # fork again next time: the broker may have logged in anew
            return None
        self.broker = BrokerPositions.from_rows(rows, started)
        return self.broker

    # ---- one alert ------------------------------------------------------------------------------

    def _check_alert(self, legs: list[OrderSnapshot]) -> None:
        legs = [o for o in legs if o.command_id not in self.book.in_flight]  # sent already: a repeated check
        entries = [o for o in legs if o.execution_type == "ENTRY"]
        exits = [o for o in legs if o.execution_type != "ENTRY"]
        if entries:
            self._carry_out(plan_entry(self.book, entries), together=True)
        if exits:
            self._check_exits(exits)

    def _check_exits(self, exits: list[OrderSnapshot]) -> None:
        group = alert_group(exits[0])
        mine = {o.command_id for o in exits}
        siblings = [OrderSnapshot.model_validate(o) for o in queries.alert_legs(exits[0].alert_key)
                    if o["command_id"] not in mine]
        broker = self._broker_truth()
        if broker is None:
            legs = ", ".join(f"{o.symbol}" for o in exits)
            self._notify("ledger", f"Exit {group} ({exits[0].strategy_name}: {legs}) sized by own ledger: broker "
                                   f"position unknown (PositionBook unreadable)")
        plan = plan_exit(self.book, exits, broker, siblings)
        self._carry_out(plan, together=False)

    def _carry_out(self, plan: AlertPlan, *, together: bool) -> None:
        for cid, exit_id in plan.supersede.items():
            logger.info("EXIT {} cancels resting entry {}", exit_id, cid)
            self.registry.tell("broker", CancelOrder(command_id=cid, reason=f"superseded by EXIT {exit_id}"))
        for leg, decision in plan.write_offs:
            self._write_off(leg, decision)
        for cid, tag in plan.blocked.items():
            self._block_id(cid, tag, plan.details.get(cid))
        to_send: list[OrderSnapshot] = []
        failed: OrderSnapshot | None = None
        for leg, decision in plan.send:
            self.book.release(leg.command_id)  # admitted while planning; admitted again below as sent
            pieces = self._resolve_and_split(leg, decision)
            if not pieces:
                failed = failed or leg
                if together:
                    break
                continue
            to_send.extend(pieces)
        if together and failed is not None:
            # A leg of the spread could not be prepared: none of them goes.
            held_back = {o.command_id for o in to_send} | {leg.command_id for leg, _ in plan.send}
            for cid in sorted(held_back - {failed.command_id}):
                self._block_id(cid, "GUARD_BLOCKED:OTHER_LEG_BLOCKED", f"leg {failed.command_id} could not be "
                                                                     f"prepared")
            return
        if plan.hold:
            self._hold(plan, to_send)
        for order in to_send:
            self.book.admit(order)
        if to_send:
            self.registry.tell("broker", SendLegs(orders=tuple(to_send), together=together and len(to_send) > 1))

    def _resolve_and_split(self, leg: OrderSnapshot, decision: Decision) -> tuple[OrderSnapshot, ...]:
        order = leg
        if (decision.side, decision.quantity, decision.product) != (leg.side, leg.quantity, leg.product):
            result: TransitionResult = self.registry.ask("store", AmendExitLeg(
                command_id=leg.command_id, side=decision.side, quantity=decision.quantity,
                product=decision.product))
            if result.reason == "ALREADY_SPLIT":
                logger.warning("exit leg {} was already resolved and split (a retried check): sending what is "
                               "still CREATED", leg.command_id)
                return self._resume_split(leg.command_id)
            if not result.applied or result.order is None:
                logger.warning("exit leg {} could not be resolved (no longer CREATED)", leg.command_id)
                return ()
            order = result.order
        if decision.note:
            logger.info("exit {} {} {} {} {}: {}", order.command_id, order.side, order.quantity, order.symbol,
                        order.product, decision.note)
        return self._split(order)

    def _write_off(self, leg: OrderSnapshot, decision: Decision) -> None:
        key = decision.position
        held = self.book.positions.get(key, 0)
        signed = -decision.write_off if held > 0 else decision.write_off
        self.book.adjust(key, signed)
        strategy, exchange, symbol, product = key
        reason = (f"squared off outside the service: the broker holds less than {strategy}'s {held:+d} "
                  f"({decision.note})")
        self.registry.tell("store", WriteOffPosition(strategy_name=strategy, exchange=exchange, symbol=symbol,
                                                     product=product, quantity=signed, reason=reason,
                                                     command_id=leg.command_id))
        self._notify("ledger", f"{strategy} {exchange} {symbol} {product}: {abs(signed)} squared off outside the "
                               f"service; written off the strategy's ledger ({held:+d} -> {held + signed:+d})")

    # ---- EXIT wings waiting for their buy-backs ---------------------------------------------------

    def _hold(self, plan: AlertPlan, sent: list[OrderSnapshot]) -> None:
        group = alert_group(plan.hold[0])
        held = self.held.setdefault(group, HeldWings())
        # The children of a split buy-back are buy-backs too.
        parents = set(plan.wait_for)
        held.wait_for |= parents | {o.command_id for o in sent if o.parent_command_id in parents}
        for wing in plan.hold:
            if wing.command_id not in held.wings:
                held.wings[wing.command_id] = wing
                self.registry.tell("store", NoteOrder(command_id=wing.command_id, detail=(
                    f"{HELD} waiting for the buy-back(s) of the same underlying to fill before selling this wing")))
        logger.info("exit {}: wings {} wait for buy-backs {}", group, sorted(held.wings), sorted(held.wait_for))

    def _release_wings(self, order: OrderSnapshot) -> None:
        group = alert_group(order)
        held = self.held.get(group)
        if held is None or order.command_id not in held.wait_for:
            return
        held.wait_for.discard(order.command_id)
        failed = order.status == T.FAILED and order.tag not in NOTHING_TO_EXIT
        if held.wait_for and not failed:
            return
        del self.held[group]
        self._check_exits(list(held.wings.values()))

    # ---- a spread that is not whole ---------------------------------------------------------------

    def _watch_one_legged(self, order: OrderSnapshot) -> None:
        """A leg of a multi-leg ENTRY alert failed at or after the send: if another leg of the alert went out,
        the spread is one-legged. Report it once, loudly; with one_legged = "exit" also undo the legs that went."""
        if order.execution_type != "ENTRY" or is_blocker_tag(order.tag) or not order.alert_key:
            return
        group = alert_group(order)
        if group in self.one_legged:
            return
        legs = [OrderSnapshot.model_validate(o) for o in queries.alert_legs(order.alert_key)]
        went = [o for o in legs if o.command_id != order.command_id
                and (o.filled_qty > 0 or o.status in T.OPEN_AT_BROKER)]
        if not went:
            return
        self.one_legged.add(group)
        failed = [o for o in legs if o.status == T.FAILED and not is_blocker_tag(o.tag)] or [order]
        text = (f"ONE-LEGGED SPREAD {order.alert_id} ({order.strategy_name}): "
                f"failed {', '.join(f'{o.side} {o.quantity} {o.symbol} [{o.tag}]' for o in failed)}; "
                f"went out {', '.join(f'{o.side} {o.filled_qty}/{o.quantity} {o.symbol} ({o.status})' for o in went)}")
        mode = getattr(getattr(self.config, "risk", None), "one_legged", "notify")
        logger.bind(event="one_legged", alert_id=order.alert_id, alert_key=group).critical("{}", text)
        self._notify("risk", text + ("; exiting the legs that went out" if mode == "exit"
                                     else "; nothing was exited: check the position"))
        if mode == "exit":
            for o in went:
                if o.status in T.OPEN_AT_BROKER:
                    self.registry.tell("broker", CancelOrder(command_id=o.command_id, reason="one-legged spread"))
            self.undoing[group] = {o.command_id for o in went}
            self._undo(group)

    def _undo(self, group: str) -> None:
        """one_legged = "exit": once the legs that went out are terminal (filled, or cancelled above), exit what
        they filled: an EXIT alert through the whole pipeline (source "risk"), capped at the broker's truth like
        any exit."""
        ids = self.undoing[group]
        legs = [OrderSnapshot.model_validate(o) for o in queries.alert_legs(group) if o["command_id"] in ids]
        if any(o.status in T.NON_TERMINAL for o in legs):
            return  # a cancel or a fill is on its way
        del self.undoing[group]
        filled = [o for o in legs if o.filled_qty > 0]
        if not filled:
            return
        alert_id = f"one-legged-exit-{uuid.uuid4().hex[:12]}"
        legs = tuple(NewOrder(command_id=new_command_id(), alert_id=alert_id, client_id=o.client_id, source="risk",
                              strategy_name=o.strategy_name, execution_type="EXIT", exchange=o.exchange,
                              symbol=o.symbol, side="SELL" if o.side == "BUY" else "BUY", quantity=o.filled_qty,
                              product=o.product, order_type="MARKET", leg_index=i) for i, o in enumerate(filled))
        try:
            result: RegisterResult = self.registry.ask("store", RegisterAlert(
                alert_id=alert_id, source="risk", strategy_name=filled[0].strategy_name,
                body=f'{{"reason": "one-legged spread {alert_group(filled[0])}"}}', legs=legs), timeout=5)
        except Exception as exc:  # noqa: BLE001 - said loudly; the trader exits by hand
            logger.error("guard: could not register the one-legged exit ({!r})", exc)
            self._notify("risk", f"Could not exit the one-legged spread {alert_group(filled[0])}: exit it by hand")
            return
        logger.warning("one-legged spread: exits {} registered (the store sends them down the pipeline)",
                       ", ".join(o.command_id for o in result.orders))

    # ---- helpers ----------------------------------------------------------------------------------

    def _notify(self, kind: str, text: str) -> None:
        self.registry.tell("notifier", Notify(kind=kind, text=text))

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
        self._block_id(order.command_id, tag)

    def _block_id(self, command_id: str, tag: str, detail: str | None = None) -> None:
        self.book.release(command_id)
        self.registry.tell("store", TransitionOrder(command_id=command_id, to_status="FAILED",
                                                    expect_from=("CREATED",), tag=tag, detail=detail))

    # ---- the freeze split -------------------------------------------------------------------------

    def _freeze_table(self) -> dict[str, int]:
        if self.freeze is None:
            try:
                self.freeze = self.registry.ask("broker", GetFreezeTable(), timeout=5)
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
            self.registry.ask("store", Sync(), timeout=30)  # every earlier write applied
        except Exception as exc:  # noqa: BLE001
            logger.error("store not answering ({!r}); {} left for restart recovery", exc, command_id)
            return ()
        family = queries.split_family(command_id)
        if queries.has_children(command_id):
            return family  # split: the parent and the children that are still CREATED
        if family:  # never split and still CREATED: it is above the freeze quantity, do not send it whole
            self._block(family[0], "GUARD_BLOCKED:SPLIT_FAILED")
        return ()


def _by_group(orders) -> dict[str, list[OrderSnapshot]]:
    """Orders by alert (one message may carry several alerts' legs, e.g. at recovery), in leg order."""
    groups: dict[str, list[OrderSnapshot]] = defaultdict(list)
    for order in orders:
        groups[alert_group(order)].append(order)
    return groups
