"""RiskActor: step 2A (ENTRY orders only; an EXIT always passes risk), the trading state and the flatten.

The rules, the state and the flatten planner are pure and live in actors/risk_rules.py; this actor feeds
them (PositionBook snapshots from the watcher, instrument facts from the broker, our orders from the
database), persists the state in `risk_state` (the only table it writes), tells StoreActor to fail blocked
legs and passes the rest to the guard.

Flattening (breach, `POST /risk/flatten`, square-off time): every round cancels our open orders in scope at
the broker and registers EXIT legs (source "risk") through StoreActor exactly as the ingress registers an
alert, then sends them through the normal pipeline (risk -> guard -> broker). Rounds repeat on each
PositionBook snapshot until two consecutive reads leave nothing to cancel, exit, wait for or report, or until
`[risk] flatten_max_rounds` rounds have not got there: then the job ends and names what it could not exit
(once: a log line and one notification). A job only ever exits what its orders made: positions of orders
registered before it started (see actors/risk_rules.py, "Flatten jobs").
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta

from loguru import logger

from actors.base import SupervisedActor
from actors.pnl_series import PnlSeries
from actors.risk_rules import (
    ACTIVE,
    HALTED,
    IST,
    KILL_SWITCH,
    REDUCING,
    FlattenJob,
    Limits,
    OrderFacts,
    RiskCore,
    describe_unfinished,
    lot_size_fallback,
    plan_flatten,
    positions_pnl,
    product_name,
    reference_price,
    trading_day,
)
from messages.broker import GetReader, Relogin
from messages.commands import (
    CancelOrder,
    GetState,
    Halt,
    Notify,
    OrdersRegistered,
    PositionsSnapshot,
    RegisterAlert,
    Resume,
    RiskCleared,
    TransitionOrder,
)
from messages.orders import NewOrder, OrderSnapshot, new_command_id
from messages.risk import (
    GetPnlSeries,
    CancelIntent,
    ExitIntent,
    Flatten,
    FlattenRound,
    GetLastPrices,
    LastPrice,
    LastPrices,
    Reduce,
    RiskEvent,
    StopFlatten,
)
from runtime.noren.errors import SessionExpired
from storage import queries
from storage import risk_state

__all__ = ["ACTIVE", "HALTED", "REDUCING", "RiskActor", "positions_pnl"]

QUOTE_TTL_S = 10.0  # a last price older than this is fetched again for a MARKET notional check
CANCEL_RETRY_S = 10.0  # a cancel is re-sent if the order is still open this long after
SETTLE_READS = 2  # consecutive idle PositionBook reads before a flatten is declared done
ADMITTED_TTL_S = 600.0
PNL_SAVE_EVERY_S = 30.0
PNL_SERIES_KEY = "pnl_series"  # risk_state key of today's P&L through the day  # an ordinary PnL change is saved at most this often (breach, warning, floor at once)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def last_prices(rows, at: str | None = None) -> LastPrices:
    """The last price and contract multiplier (mult x prcftr) of every row of a PositionBook."""
    out = []
    for row in rows:
        if not row.get("exch") or not row.get("tsym"):
            continue
        mult = (row.get("mult") or 1.0) * (row.get("prcftr") or 1.0)
        out.append(LastPrice(exchange=str(row["exch"]), symbol=str(row["tsym"]), last_price=row.get("lp"),
                             multiplier=float(mult)))
    return LastPrices(prices=tuple(out), at=at)


class RiskActor(SupervisedActor):
    registry_name = "risk"
    HANDLERS = {
        OrdersRegistered: "_on_orders_registered",
        PositionsSnapshot: "_on_positions_snapshot",
        Halt: "_on_halt",
        Reduce: "_on_reduce",
        Resume: "_on_resume",
        Flatten: "_on_flatten",
        StopFlatten: "_on_stop_flatten",
        GetState: "_on_get_state",
        GetPnlSeries: "_on_pnl_series",
        GetLastPrices: "_on_last_prices",
        FlattenRound: "_on_flatten_round",
    }

    def __init__(self, registry, config, *, clock=None):
        super().__init__(registry)
        self.config = config
        self.client_id = config.service.client_id
        self.clock = clock or _utc_now
        self.limits = Limits.from_config(config)
        self.core = RiskCore(self.limits)
        self.reader = None
        self.rows: tuple[dict, ...] = ()  # the last successful, non-empty PositionBook
        self.rows_at: datetime | None = None
        self.last_ok_at: datetime | None = None
        self.started_at: datetime | None = None
        self.stale_notified = False
        self.instruments: dict[tuple[str, str], dict] = {}  # (exch, tsym) -> token, ls, lp, lp_at
        self.instruments_day = None
        self.admitted: dict[str, float] = {}  # entries passed while still CREATED: command_id -> epoch
        self.cancel_sent: dict[str, float] = {}
        self.soft_saved_at = float("-inf")
        self.series = PnlSeries()  # today's P&L a minute at a time (the dashboard's chart)
        self.series_saved: str | None = None

    # ---- lifecycle and persistence --------------------------------------------------------------

    def on_start(self):
        rows = risk_state.load(self.client_id)
        self.series = PnlSeries.from_json(rows.pop(PNL_SERIES_KEY, None))
        self.series_saved = self.series.to_json()
        self.core = RiskCore.load(self.limits, rows)
        now = self.clock()
        self.started_at = now
        self.core.stamp_jobs(_iso(now), _iso(self._wall(now)))  # jobs saved without their start
        self._rebuild_rates(now)
        self._after(self.core.roll(now), now)
        self._persist()
        state, reason = self.core.effective(now)
        logger.info("risk state {}{} (mode {}), limits {}", state, f" ({reason})" if reason else "",
                    self.core.mode.state, self.limits.as_dict())

    def on_stop(self):
        self._persist(everything=True)

    def _persist(self, everything: bool = False) -> None:
        soft = everything or time.monotonic() - self.soft_saved_at >= PNL_SAVE_EVERY_S
        if soft and self.core.soft:
            self.soft_saved_at = time.monotonic()
        dirty = self.core.take_dirty(soft=soft)
        if soft and (series := self.series.to_json()) != self.series_saved:
            dirty[PNL_SERIES_KEY], self.series_saved = series, series
        risk_state.save(self.client_id, dirty)

    def _wall(self, when: datetime) -> datetime:
        """A time on the risk clock as wall-clock time, to compare with stored created_at/updated_at (which are
        always wall-clock). The two differ only when a test injects a clock."""
        return when - (self.clock() - _utc_now())

    def _on_risk_clock(self, stored_iso: str) -> float:
        """A stored wall-clock time as a timestamp on the risk clock."""
        return (datetime.fromisoformat(stored_iso) + (self.clock() - _utc_now())).timestamp()

    def _rebuild_rates(self, now: datetime) -> None:
        """Entries admitted in the last minute before a restart still count against the rate limits."""
        cutoff = _iso(self._wall(now) - timedelta(seconds=60))
        for created_at, tag in queries.entries_created_since(cutoff):
            if tag and tag.startswith(("RISK_BLOCKED", "VALIDATION_FAILED")):
                continue
            self.core.rates.record(self._on_risk_clock(created_at))

    def _notify(self, text: str) -> None:
        self.registry.tell("notifier", Notify(kind="risk", text=text))

    def _after(self, events: list[RiskEvent], now: datetime) -> None:
        """Log and notify the core's events; a breach starts the flatten."""
        for event in events:
            loud = event.kind in ("BREACH", "WARNING", "COOLDOWN")
            logger.bind(event="risk", kind=event.kind).log("WARNING" if loud else "INFO", "risk: {}", event.text)
            self._notify(event.text)
            if event.kind == "BREACH":
                self._start_flatten(FlattenJob(reason="DAILY_LOSS_HIT"), now)
        self._persist()

    # ---- messages -------------------------------------------------------------------------------

    def _on_orders_registered(self, message: OrdersRegistered) -> None:
        self._check(message.orders, self.clock())

    def _on_positions_snapshot(self, message: PositionsSnapshot) -> None:
        self._on_positions(message, self.clock())

    def _on_halt(self, message: Halt) -> dict:
        now = self.clock()
        reason = KILL_SWITCH if message.reason == "MANUAL" else message.reason
        self._after([e for e in [self.core.halt(now, reason)] if e], now)
        return self.view(now)

    def _on_reduce(self, message: Reduce) -> dict:
        now = self.clock()
        self._after([e for e in [self.core.reduce(now)] if e], now)
        return self.view(now)

    def _on_resume(self, message: Resume) -> dict:
        now = self.clock()
        self._after([e for e in [self.core.resume(now)] if e], now)
        self._ended(self.core.stop_jobs(manual_only=True), "resume")  # a breach's flatten goes on
        view = self.view(now)
        if view["state"] != ACTIVE:
            self._notify(f"Resume: mode ACTIVE, but entries stay blocked: {view['reason']}")
        return view

    def _on_flatten(self, message: Flatten) -> dict:
        return self._flatten_request(message, self.clock())

    def _on_stop_flatten(self, message: StopFlatten) -> dict:
        ended = self.core.stop_jobs()
        self._ended(ended, "the operator (flatten stop)")
        view = self.view(self.clock())
        view["flatten_stopped"] = [j.as_dict() for j in ended]
        return view

    def _on_get_state(self, message: GetState) -> dict:
        return self.view(self.clock())

    def _on_pnl_series(self, message: GetPnlSeries) -> dict:
        return self.series.as_dict()

    def _on_last_prices(self, message: GetLastPrices) -> LastPrices:
        return last_prices(self.rows, _iso(self.rows_at) if self.rows_at else None)

    def _on_flatten_round(self, message: FlattenRound) -> None:
        """A round on a fresh PositionBook, without waiting for the next poll."""
        now = self.clock()
        rows = self._read_positions()
        self._run_jobs(rows if rows is not None else self.rows, now, counts_as_read=False)
        self._persist()

    def view(self, now: datetime) -> dict:
        view = self.core.view(now)
        view["open_positions"] = len(self._open_keys(now, exclude=set()))
        view["pnl_stale"] = self._pnl_stale(now)
        return view

    # ---- step 2A --------------------------------------------------------------------------------

    def _check(self, orders: tuple[OrderSnapshot, ...], now: datetime) -> None:
        self._after(self.core.roll(now), now)
        checking = {o.command_id for o in orders}
        open_keys = self._open_keys(now, exclude=checking) if self.limits.max_open_positions > 0 else set()
        blocked = self.core.check_alert(orders, self._facts, open_keys, now)
        first = next(((cid, why) for cid, why in blocked.items() if why != "OTHER_LEG_BLOCKED"), None)
        passed = []
        for order in orders:
            reason = blocked.get(order.command_id)
            if reason is None:
                passed.append(order)
                if order.execution_type == "ENTRY":
                    self.admitted[order.command_id] = now.timestamp()
                continue
            detail = f"leg {first[0]} blocked: {first[1]}" if first and reason == "OTHER_LEG_BLOCKED" else None
            logger.bind(event="risk_block", command_id=order.command_id, reason=reason).info(
                "risk blocked {} {} {} {}: {}", order.command_id, order.side, order.quantity, order.symbol, reason)
            self.registry.tell("store", TransitionOrder(command_id=order.command_id, to_status="FAILED",
                                                        expect_from=("CREATED",), tag=f"RISK_BLOCKED:{reason}",
                                                        detail=detail))
        if passed:
            self.registry.tell("guard", RiskCleared(orders=tuple(passed)))

    def _open_keys(self, now: datetime, exclude: set[str]) -> set[tuple[str, str, str]]:
        """Distinct open positions: non-zero rows of the last PositionBook, plus our entries in flight or
        filled since that read (admitted by risk; CREATED legs still waiting for risk do not count)."""
        keys = {(str(r.get("exch")), str(r.get("tsym")), product_name(r.get("prd")))
                for r in self.rows if int(r.get("netqty") or 0) != 0}
        if self.rows_at is not None:
            since = _iso(self._wall(self.rows_at) - timedelta(seconds=2))
        else:
            since = _iso(datetime.combine(trading_day(now), datetime.min.time(), IST))
        cutoff = now.timestamp() - ADMITTED_TTL_S
        self.admitted = {k: v for k, v in self.admitted.items() if v >= cutoff}
        for command_id, exchange, symbol, product, status in queries.entry_instruments(since):
            if command_id in exclude or (status == "CREATED" and command_id not in self.admitted):
                continue
            keys.add((exchange, symbol, product))
        return keys

    # ---- instrument facts (lot size, last price) ------------------------------------------------

    def _facts(self, order: OrderSnapshot) -> OrderFacts:
        """Lot size: the broker's `ls` (PositionBook, else SearchScrip/GetQuotes), else the built-in table.
        Last price (MARKET notional): the PositionBook `lp`, else a GetQuotes no older than QUOTE_TTL_S."""
        today = trading_day(self.clock())
        if self.instruments_day != today:  # lot sizes change with the series: learn them again each day
            self.instruments, self.instruments_day = {}, today
        info = self.instruments.setdefault((order.exchange, order.symbol), {})
        need_ls = self.limits.max_lots_per_order > 0 and not info.get("ls")
        stale = time.monotonic() - info.get("lp_at", float("-inf")) > QUOTE_TTL_S
        need_lp = (self.limits.max_notional_per_order > 0 and reference_price(order, None) is None
                   and (not info.get("lp") or stale))
        if need_ls or need_lp:
            self._lookup(order.exchange, order.symbol, info, quote=need_lp)
        lot = info.get("ls")
        return OrderFacts(lot_size=lot or lot_size_fallback(order.exchange, order.symbol),
                          last_price=info.get("lp"))

    def _learn_instruments(self, rows) -> None:
        stamp = time.monotonic()
        for row in rows:
            info = self.instruments.setdefault((str(row.get("exch")), str(row.get("tsym"))), {})
            for field in ("token", "ls"):
                if row.get(field):
                    info[field] = row[field]
            if row.get("lp"):
                info["lp"], info["lp_at"] = row["lp"], stamp

    def _reader(self):
        """A forked NorenRestClient sharing BrokerActor's session (as the watcher has)."""
        if self.reader is None:
            try:
                self.reader = self.registry.ask("broker", GetReader(), timeout=5)
            except Exception as exc:  # noqa: BLE001 - no reader: fall back to what is known
                logger.warning("risk: no broker reader ({!r})", exc)
        return self.reader

    def _broker_failed(self, what: str, exc: Exception) -> None:
        if isinstance(exc, SessionExpired):
            logger.warning("risk: session expired during {}; asking for a new login", what)
            self.registry.tell("broker", Relogin())
            self.reader = None  # fork again: the broker may have been restarted with a new client
        else:
            logger.warning("risk: {} failed: {}", what, exc)

    def _lookup(self, exch: str, tsym: str, info: dict, *, quote: bool) -> None:
        reader = self._reader()
        if reader is None:
            return
        try:
            if (not info.get("token") or not info.get("ls")) and not info.get("searched"):
                found = [s for s in reader.search_scrip(exch, tsym) if (s.tsym or "").upper() == tsym.upper()]
                info["searched"] = True  # once a day: an unknown symbol is not searched on every entry
                if found:
                    info["token"] = found[0].token
                    if found[0].ls:
                        info["ls"] = found[0].ls
            if quote and info.get("token"):
                reply = reader.get_quotes(exch, info["token"])
                if reply.ls:
                    info["ls"] = reply.ls
                if reply.lp:
                    info["lp"], info["lp_at"] = reply.lp, time.monotonic()
        except Exception as exc:  # noqa: BLE001 - a failed look-up leaves the facts unknown, never crashes risk
            self._broker_failed(f"instrument look-up {exch} {tsym}", exc)

    # ---- PnL ------------------------------------------------------------------------------------

    def _pnl_stale(self, now: datetime) -> bool:
        since = self.last_ok_at or self.started_at or now
        return (now - since).total_seconds() > max(60.0, 10 * self.config.risk.pnl_poll_interval_s)

    def _on_positions(self, message: PositionsSnapshot, now: datetime) -> None:
        events = self.core.on_positions(message.rows, message.ok, now)
        if message.ok and self.core.day is not None:
            self.series.add(now, trading_day(now), self.core.day.pnl, self.core.loss_floor())
        if message.ok:
            self.last_ok_at = now
            if message.rows:
                self.rows, self.rows_at = tuple(message.rows), now
                self._learn_instruments(message.rows)
            if self.stale_notified:
                self.stale_notified = False
                self._notify("PositionBook reads work again; PnL is current")
        elif self._pnl_stale(now) and not self.stale_notified:
            self.stale_notified = True
            logger.error("risk: no successful PositionBook read for a while; the loss limit works on the last "
                         "known PnL {}", self.core.day.pnl)
            self._notify(f"PositionBook reads are failing: the daily loss limit works on the last known PnL "
                         f"({self.core.day.pnl})")
        self._after(events, now)
        for exchange in self.core.due_square_offs(now):
            self._start_flatten(FlattenJob(exchange=exchange, products=("MIS",), reason="SQUARE_OFF"), now)
        if message.ok:
            self._run_jobs(tuple(message.rows), now, counts_as_read=True)
        self._persist()

    # ---- flatten --------------------------------------------------------------------------------

    def _start_flatten(self, job: FlattenJob, now: datetime) -> bool:
        job.started_at = _iso(now)
        job.orders_before = _iso(self._wall(now))  # orders' created_at is wall-clock time
        if not self.core.add_job(job):
            logger.bind(event="risk", kind="FLATTEN").info("risk: flatten {} ({}) requested: a running flatten covers "
                                                          "it and starts again from now", job.describe(), job.reason)
            self._persist()
            return False
        logger.bind(event="risk", kind="FLATTEN").warning("risk: flatten started: {} ({})", job.describe(), job.reason)
        self._notify(f"Flatten started ({job.reason}): cancelling open orders and exiting {job.describe()}")
        self._persist()
        return True

    def _ended(self, jobs: list[FlattenJob], by: str) -> None:
        for job in jobs:
            logger.bind(event="risk", kind="FLATTEN").warning("risk: flatten {} ({}) ended by {} after {} rounds",
                                                             job.describe(), job.reason, by, job.rounds)
            self._notify(f"Flatten ({job.reason}) of {job.describe()} ended by {by}; nothing more is exited")
        if jobs:
            self._persist()

    def _flatten_request(self, message: Flatten, now: datetime) -> dict:
        job = FlattenJob(strategy=message.strategy, exchange=message.exchange, reason=message.reason)
        if message.strategy is None and message.exchange is None:
            self._after([e for e in [self.core.reduce(now)] if e], now)  # nothing may refill the account
        started = self._start_flatten(job, now)
        self.actor_ref.tell(FlattenRound())  # after answering: cancels and exits may take a few REST calls
        view = self.view(now)
        view["flatten_started"] = started
        return view

    def _read_positions(self) -> tuple[dict, ...] | None:
        reader = self._reader()
        if reader is None:
            return None
        try:
            rows = tuple(r.model_dump() for r in reader.position_book())
        except Exception as exc:  # noqa: BLE001 - fall back to the last snapshot
            self._broker_failed("PositionBook read", exc)
            return None
        if rows:
            self.rows, self.rows_at = rows, self.clock()
        return rows

    def _run_jobs(self, rows: tuple[dict, ...], now: datetime, *, counts_as_read: bool) -> None:
        if not self.core.jobs:
            return
        open_orders = queries.open_orders_brief()
        ledger = queries.strategy_positions()
        for job in list(self.core.jobs):
            self._round(job, rows, open_orders, ledger, now, counts_as_read)

    def _round(self, job: FlattenJob, rows, open_orders, ledger, now: datetime, counts_as_read: bool) -> None:
        later = queries.entry_positions_since(job.orders_before) if job.orders_before else []
        plan = plan_flatten(rows, open_orders, ledger, strategy=job.strategy, exchange=job.exchange,
                            products=job.products, orders_before=job.orders_before or None, later_entries=later)
        if not rows:
            # An empty PositionBook while the job's strategies hold positions is not believed: no exits, but
            # the read counts as a round, so a broker that keeps answering "no data" cannot keep the job alive.
            probe = plan_flatten([{"exch": e["exchange"], "tsym": e["symbol"], "prd": e["product"],
                                   "netqty": e["net_qty"]} for e in ledger], open_orders, ledger,
                                 strategy=job.strategy, exchange=job.exchange, products=job.products,
                                 orders_before=job.orders_before or None, later_entries=later)
            if probe.exits:
                if counts_as_read:
                    self._count_round(job, probe, unbelieved=True)
                return
        if counts_as_read:
            if not (plan.cancels or plan.exits or plan.waiting or plan.leftovers):
                job.idle_reads += 1
                self.core.dirty.add("flatten")
                if job.idle_reads >= SETTLE_READS:
                    self.core.end_job(job)
                    logger.bind(event="risk", kind="FLATTEN").warning("risk: flatten {} done: flat", job.describe())
                    self._notify(f"Flatten ({job.reason}) done: {job.describe()} flat")
                return
            if not self._count_round(job, plan):
                return
        for cancel in plan.cancels:
            self._cancel(cancel, now)
        if plan.exits:
            self._register_exits(job, plan.exits, now)

    def _count_round(self, job: FlattenJob, plan, *, unbelieved: bool = False) -> bool:
        """One more round of a job that is not done; False when it has had its rounds and ended (reported)."""
        job.idle_reads = 0
        self.core.dirty.add("flatten")
        if job.rounds < self.config.risk.flatten_max_rounds:
            job.rounds += 1
            return True
        self.core.end_job(job)
        items = describe_unfinished(plan)
        if unbelieved:
            items = ["the PositionBook reads empty while our ledger holds "
                     + ", ".join(f"{e.exchange}:{e.symbol} {e.product} ({e.strategy_name})" for e in plan.exits)]
        logger.bind(event="risk", kind="FLATTEN").critical(
            "risk: flatten {} ({}) ended after {} rounds without finishing: {}", job.describe(), job.reason,
            job.rounds, "; ".join(items))
        self._notify(f"CRITICAL: flatten ({job.reason}) of {job.describe()} ended after {job.rounds} rounds and "
                     f"could not exit: {'; '.join(items)}. Close these at the broker yourself.")
        return False

    def _cancel(self, cancel: CancelIntent, now: datetime) -> None:
        last = self.cancel_sent.get(cancel.command_id)
        if last is not None and now.timestamp() - last < CANCEL_RETRY_S:
            return
        self.cancel_sent[cancel.command_id] = now.timestamp()
        # BrokerActor owns order actions at the broker (session, re-login); the outcome comes back as a report.
        self.registry.tell("broker", CancelOrder(command_id=cancel.command_id, reason=f"risk flatten "
                                                 f"({cancel.strategy_name} {cancel.symbol})"))
        logger.bind(event="risk", kind="CANCEL", command_id=cancel.command_id).warning(
            "risk: cancel requested for {} {} {} (broker id {})", cancel.command_id, cancel.strategy_name,
            cancel.symbol, cancel.broker_order_id)

    def _register_exits(self, job: FlattenJob, exits: tuple[ExitIntent, ...], now: datetime) -> None:
        alert_id = f"risk-{job.reason.lower()}-{uuid.uuid4().hex[:12]}"
        legs = tuple(NewOrder(command_id=new_command_id(), alert_id=alert_id, client_id=self.client_id,
                              source="risk", strategy_name=e.strategy_name, execution_type="EXIT",
                              exchange=e.exchange, symbol=e.symbol, side=e.side, quantity=e.quantity,
                              product=e.product, order_type="MARKET", leg_index=i)
                     for i, e in enumerate(exits))
        body = json.dumps({"reason": job.reason, "scope": job.as_dict(), "round": job.rounds})
        try:
            self.registry.ask("store", RegisterAlert(alert_id=alert_id, source="risk", strategy_name=job.strategy,
                                                     body=body, legs=legs), timeout=5)
        except Exception as exc:  # noqa: BLE001 - not registered: the next round plans them again
            logger.error("risk: could not register flatten exits ({!r}); retrying on the next round", exc)
            return
        what = ", ".join(f"{e.side} {e.quantity} {e.symbol} {e.product} ({e.strategy_name})" for e in exits)
        logger.bind(event="risk", kind="FLATTEN", alert_id=alert_id).warning("risk: flatten round {}: {}",
                                                                           job.rounds, what)
        self._notify(f"Flatten ({job.reason}) round {job.rounds}: {what}")
        # The store announces the registered exits back to this actor, as for every alert: they pass risk (EXITs
        # always do) and go on to the guard, which sizes them by the broker's truth.
