"""The pure core of RiskActor (step 2A): every risk rule, the trading state, the persisted state format and
the flatten planner. No I/O, no actor, no clock of its own: every time-dependent call takes `now` (an aware
datetime), so windows and day rollover are tested without real time.

Trading day
    The IST calendar date of `now`. Everything daily (PnL, peak, warning, breach, square-off) belongs to one
    trading day; a new date starts a fresh day. When trading hours are enforced (the live broker), PnL reads
    before 09:00 IST are ignored: the broker's PositionBook still shows the previous session until its
    beginning-of-day run, and that must not breach the new day.

Daily max loss with trailing (`max_daily_loss` = B > 0, `trail_step` = S >= 0, `warning_at` = w)
    pnl        = sum of rpnl + urmtom over non-CNC PositionBook rows (positions_pnl)
    peak       = the highest pnl read today, never below 0; it only ratchets up
    trail      = floor(peak / S) * S            (0 when S == 0: no trailing)
    loss_floor = trail - B                      (the "dynamic" limit of the issue, as a PnL level)
    breach     when pnl <= loss_floor           (without profit: pnl <= -B, as before)
    warning    when pnl <= trail - w * B        once per trail level (it re-arms only when the floor moves up)
    Example B=10000, S=5000: floor -10000; after a peak of +7000 the floor is -5000, after +12000 it is 0,
    after +21000 it is +10000 (profit locked). The floor never moves down, not even when pnl falls.
    A breach halts entries for the rest of the trading day (persisted) and flattens the account.

Consecutive loss days (`max_loss_days` = N > 0)
    A closed trading day is a loss day when its last known pnl < 0, a win day when > 0; days with no pnl
    (or exactly 0) are skipped. When the N most recent counted days are all losses, the next trading day
    (Mon-Fri) after the last of them is a cooldown day: no entries from the end of that loss day until
    `cooldown_until` (the trading day after the cooldown day). Those loss days never count again.

Trading state
    The operator's mode (ACTIVE / REDUCING / HALTED by the kill switch) persists across days until resumed.
    The effective state is the most restrictive of: the breach of today (HALTED DAILY_LOSS_HIT), a cooldown
    (HALTED LOSS_DAYS_COOLDOWN), the mode. Resume clears only the mode. EXIT orders always pass risk in
    every state (shared/DESIGN.md step 2); REDUCING and HALTED block entries. The difference is what the
    service does: HALTED after a breach flattens; REDUCING only stops entries.

Persisted format (table risk_state, one row per client_id and key, value = JSON)
    "trading_state"   {"state": "ACTIVE"|"REDUCING"|"HALTED", "reason": str|null, "since": iso|null}
    "day:YYYY-MM-DD"  {"pnl": float|null, "pnl_at": iso|null, "peak": float, "warned_level": float|null,
                       "breached_at": iso|null, "breach_pnl": float|null, "squared_off": [exchange, ...]}
    "streak"          {"loss_days": int, "evaluated_for": date|null, "reset_after": date|null,
                       "cooldown_until": date|null}
    "flatten"         {"jobs": [{"strategy": str|null, "exchange": str|null, "products": [..],
                                 "reason": str, "started_at": iso, "orders_before": iso, "rounds": int,
                                 "idle_reads": int}]}
                      started_at is on the risk clock (the job's trading day); orders_before is the same moment
                      on the wall clock (orders' created_at). A job saved without them counts as started at load.

Flatten jobs
    A job flattens what existed when it started: the positions of orders registered before orders_before (and
    what those orders fill later), never a position of an ENTRY registered after it (plan_flatten takes the
    fills of those later entries off both the broker's rows and the ledger). A PositionBook read that leaves
    nothing to cancel, exit, wait for or report is idle; two idle reads in a row end the job (flat). Any other
    read is a round; after `flatten_max_rounds` rounds the job ends and names what it could not exit.
    Resume ends MANUAL jobs; StopFlatten ends every job; neither changes the trading state.
"""

from __future__ import annotations

import json
import math
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone
from typing import Any

from actors.instruments import lot_size_fallback as instrument_lot_size

from messages.orders import OrderSnapshot
from messages.risk import CancelIntent, ExitIntent, FlattenPlan, Leftover, RiskEvent

IST = timezone(timedelta(hours=5, minutes=30), "IST")
ACTIVE, REDUCING, HALTED = "ACTIVE", "REDUCING", "HALTED"
STATES = (ACTIVE, REDUCING, HALTED)

# MIS square-off times in IST, used when none are configured and trading hours are enforced (the live
# broker's default; off with the paper exchange so nothing depends on the time of day a test runs).
DEFAULT_SQUARE_OFF = {"NSE": "15:15", "NFO": "15:15", "BSE": "15:15", "BFO": "15:15", "CDS": "16:45",
                      "MCX": "23:00"}

# Entry windows in IST, [start, end). Exchange holidays are not known here (only weekends are).
SESSIONS: dict[str, tuple[time, time]] = {
    "NSE": (time(9, 15), time(15, 30)),
    "NFO": (time(9, 15), time(15, 30)),
    "BSE": (time(9, 15), time(15, 30)),
    "BFO": (time(9, 15), time(15, 30)),
    "MCX": (time(9, 0), time(23, 30)),
    "CDS": (time(9, 0), time(17, 0)),
}
PNL_DAY_START = time(9, 0)  # with trading hours enforced, earlier PnL reads belong to the previous session


PRODUCTS = {"M": "NRML", "I": "MIS", "C": "CNC", "NRML": "NRML", "MIS": "MIS", "CNC": "CNC"}
INTRADAY_PRODUCTS = ("NRML", "MIS")  # flattened on a breach; CNC (delivery) is never touched
OPEN_STATUSES = ("CREATED", "SENT_TO_BROKER", "PARTIAL")

# Block reasons (the part after RISK_BLOCKED:).
KILL_SWITCH = "KILL_SWITCH"
REDUCING_ONLY = "REDUCING_ONLY"
DAILY_LOSS_HIT = "DAILY_LOSS_HIT"
LOSS_DAYS_COOLDOWN = "LOSS_DAYS_COOLDOWN"
OUTSIDE_TRADING_HOURS = "OUTSIDE_TRADING_HOURS"
AFTER_SQUARE_OFF = "AFTER_SQUARE_OFF"
ENTRY_RATE_PER_SECOND = "ENTRY_RATE_PER_SECOND"
ENTRY_RATE_PER_MINUTE = "ENTRY_RATE_PER_MINUTE"
MAX_LOTS_EXCEEDED = "MAX_LOTS_EXCEEDED"
MAX_NOTIONAL_EXCEEDED = "MAX_NOTIONAL_EXCEEDED"
PRICE_UNKNOWN = "PRICE_UNKNOWN"
MAX_OPEN_POSITIONS = "MAX_OPEN_POSITIONS"
OTHER_LEG_BLOCKED = "OTHER_LEG_BLOCKED"


# ---- time -----------------------------------------------------------------------------------------

def ist(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise ValueError("risk clock must return an aware datetime")
    return now.astimezone(IST)


def trading_day(now: datetime) -> date:
    return ist(now).date()


def is_trading_day(day: date) -> bool:
    return day.weekday() < 5


def next_trading_day(day: date) -> date:
    day += timedelta(days=1)
    while not is_trading_day(day):
        day += timedelta(days=1)
    return day


def previous_trading_day(day: date) -> date:
    day -= timedelta(days=1)
    while not is_trading_day(day):
        day -= timedelta(days=1)
    return day


def in_session(exchange: str, now: datetime) -> bool:
    """True inside the exchange's entry window on a weekday; unknown exchanges are never open."""
    window = SESSIONS.get(exchange)
    local = ist(now)
    if window is None or not is_trading_day(local.date()):
        return False
    return window[0] <= local.time() < window[1]


def parse_hhmm(text: str) -> time:
    """"15:15" -> time(15, 15); raises ValueError for anything else."""
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", text.strip())
    if not match:
        raise ValueError(f"{text!r} is not HH:MM")
    return time(int(match.group(1)), int(match.group(2)))


def trading_hours_enforced(override: bool | None, broker_mode: str) -> bool:
    """`risk.enforce_trading_hours` if set; otherwise by `broker.mode` alone: on for the live broker ("shoonya",
    a rehearsal against a local `oms paper` included), off for the embedded paper exchange."""
    if override is not None:
        return override
    return broker_mode == "shoonya"


# ---- PnL and the loss limit -----------------------------------------------------------------------

def _num(value: Any) -> float:
    try:
        return float(value) if value not in (None, "") else 0.0
    except (TypeError, ValueError):
        return 0.0


def product_name(prd: Any) -> str:
    text = str(prd or "").upper()
    return PRODUCTS.get(text, text)


def positions_pnl(rows: Iterable[Mapping[str, Any]]) -> float:
    """Day PnL = rpnl + urmtom over non-CNC positions (CNC is delivery, not the day's trading)."""
    return sum(_num(r.get("rpnl")) + _num(r.get("urmtom")) for r in rows if product_name(r.get("prd")) != "CNC")


def trail_level(peak: float, trail_step: float) -> float:
    """floor(peak / trail_step) * trail_step for a positive peak; 0 without trailing."""
    if trail_step <= 0 or peak <= 0:
        return 0.0
    return math.floor(peak / trail_step + 1e-9) * trail_step


def loss_floor(max_daily_loss: float, trail_step: float, peak: float) -> float | None:
    """The PnL at or below which the day is breached; None when the limit is off."""
    if max_daily_loss <= 0:
        return None
    return trail_level(peak, trail_step) - max_daily_loss


def warning_floor(max_daily_loss: float, trail_step: float, peak: float, warning_at: float) -> float | None:
    if max_daily_loss <= 0:
        return None
    return trail_level(peak, trail_step) - warning_at * max_daily_loss


# ---- per-order facts ------------------------------------------------------------------------------

def lot_size_fallback(exchange: str, symbol: str) -> int:
    """The shared built-in table of index-derivative lot sizes (actors/instruments.py), else 1."""
    return instrument_lot_size(exchange, symbol) or 1


def lots(quantity: int, lot_size: int) -> int:
    """Lots an order quantity occupies (a part lot counts as a lot)."""
    return math.ceil(quantity / max(1, lot_size))


def reference_price(order: OrderSnapshot, last_price: float | None) -> float | None:
    """The price a notional is computed at: LIMIT/SL their limit price, SL-M its trigger, MARKET the last
    price. None when nothing positive is known."""
    if order.order_type in ("LIMIT", "SL") and order.price > 0:
        return order.price
    if order.order_type == "SL-M" and order.trigger_price:
        return order.trigger_price
    return last_price if last_price and last_price > 0 else None


@dataclass(frozen=True)
class OrderFacts:
    lot_size: int = 1
    last_price: float | None = None


# ---- rate windows ---------------------------------------------------------------------------------

@dataclass
class RateWindow:
    """Timestamps (epoch seconds) of admitted entry orders over the last minute."""

    stamps: deque = field(default_factory=deque)

    def _prune(self, now_s: float) -> None:
        while self.stamps and now_s - self.stamps[0] >= 60.0:
            self.stamps.popleft()

    def counts(self, now_s: float) -> tuple[int, int]:
        """(entries in the last second, entries in the last minute)."""
        self._prune(now_s)
        return sum(1 for t in self.stamps if now_s - t < 1.0), len(self.stamps)

    def record(self, now_s: float, n: int = 1) -> None:
        self._prune(now_s)
        self.stamps.extend([now_s] * n)


# ---- consecutive loss days ------------------------------------------------------------------------

def loss_streak(day_pnls: Mapping[date, float | None], before: date,
                reset_after: date | None = None) -> tuple[int, date | None]:
    """Consecutive loss days counted back from the latest day before `before`.

    Days with no pnl or exactly 0 are skipped, a win ends the streak, days <= reset_after are not counted.
    Returns (count, the most recent loss day).
    """
    count, last = 0, None
    for day in sorted((d for d in day_pnls if d < before), reverse=True):
        if reset_after is not None and day <= reset_after:
            break
        pnl = day_pnls[day]
        if not pnl:
            continue
        if pnl > 0:
            break
        count += 1
        last = last or day
    return count, last


def cooldown_until(last_loss_day: date) -> date:
    """The first day entries are allowed again: the cooldown day is the trading day after the last loss day."""
    return next_trading_day(next_trading_day(last_loss_day))


# ---- state ------------------------------------------------------------------------------------------

def _iso(now: datetime) -> str:
    return now.astimezone(UTC).isoformat(timespec="microseconds")


def _day_of(iso: str) -> date | None:
    try:
        return trading_day(datetime.fromisoformat(iso))
    except (TypeError, ValueError):
        return None


def _date(text: str | None) -> date | None:
    return date.fromisoformat(text) if text else None


@dataclass
class Mode:
    state: str = ACTIVE
    reason: str | None = None
    since: str | None = None

    def to_json(self) -> str:
        return json.dumps({"state": self.state, "reason": self.reason, "since": self.since})

    @classmethod
    def from_json(cls, text: str) -> Mode:
        data = json.loads(text)
        state = data.get("state", ACTIVE)
        return cls(state if state in STATES else HALTED, data.get("reason"), data.get("since"))


@dataclass
class DayState:
    day: date
    pnl: float | None = None
    pnl_at: str | None = None
    peak: float = 0.0
    warned_level: float | None = None
    breached_at: str | None = None
    breach_pnl: float | None = None
    squared_off: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"day:{self.day.isoformat()}"

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("day")
        return json.dumps(data)

    @classmethod
    def from_json(cls, day: date, text: str) -> DayState:
        data = json.loads(text)
        return cls(day=day, pnl=data.get("pnl"), pnl_at=data.get("pnl_at"), peak=float(data.get("peak") or 0.0),
                   warned_level=data.get("warned_level"), breached_at=data.get("breached_at"),
                   breach_pnl=data.get("breach_pnl"), squared_off=list(data.get("squared_off") or []))


@dataclass
class Streak:
    loss_days: int = 0
    evaluated_for: date | None = None
    reset_after: date | None = None
    cooldown_until: date | None = None

    def to_json(self) -> str:
        return json.dumps({k: (v.isoformat() if isinstance(v, date) else v) for k, v in asdict(self).items()})

    @classmethod
    def from_json(cls, text: str) -> Streak:
        data = json.loads(text)
        return cls(int(data.get("loss_days") or 0), _date(data.get("evaluated_for")), _date(data.get("reset_after")),
                   _date(data.get("cooldown_until")))


@dataclass
class FlattenJob:
    strategy: str | None = None
    exchange: str | None = None
    products: tuple[str, ...] = INTRADAY_PRODUCTS
    reason: str = "MANUAL"
    started_at: str = ""  # risk clock
    rounds: int = 0  # PositionBook reads that still found something to cancel, exit, wait for or report
    idle_reads: int = 0  # consecutive PositionBook reads with nothing left to do
    orders_before: str = ""  # wall clock: orders created before this are the job's; later ENTRY orders never

    @property
    def scope(self) -> tuple[str | None, str | None]:
        return self.exchange, self.strategy

    def covers(self, other: FlattenJob) -> bool:
        return ((self.exchange is None or self.exchange == other.exchange)
                and (self.strategy is None or self.strategy == other.strategy)
                and set(other.products) <= set(self.products))

    def describe(self) -> str:
        parts = [self.exchange or "all exchanges", f"strategy {self.strategy}" if self.strategy else "all strategies"]
        return f"{', '.join(parts)} ({'/'.join(self.products)})"

    def as_dict(self) -> dict:
        return {"strategy": self.strategy, "exchange": self.exchange, "products": list(self.products),
                "reason": self.reason, "started_at": self.started_at, "orders_before": self.orders_before,
                "rounds": self.rounds, "idle_reads": self.idle_reads}

    @classmethod
    def from_dict(cls, data: dict) -> FlattenJob:
        return cls(data.get("strategy"), data.get("exchange"), tuple(data.get("products") or INTRADAY_PRODUCTS),
                   data.get("reason") or "MANUAL", data.get("started_at") or "", int(data.get("rounds") or 0),
                   int(data.get("idle_reads") or 0), data.get("orders_before") or "")


# ---- limits ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Limits:
    max_daily_loss: float = 0.0
    trail_step: float = 0.0
    warning_at: float = 0.8
    max_loss_days: int = 0
    max_lots_per_order: int = 0
    max_notional_per_order: float = 0.0
    max_open_positions: int = 0
    max_entries_per_second: float = 10.0
    max_entries_per_minute: float = 200.0
    enforce_trading_hours: bool = False
    square_off: tuple[tuple[str, time], ...] = ()

    @classmethod
    def from_config(cls, config) -> Limits:
        r, b = config.risk, config.broker
        return cls(
            max_daily_loss=r.max_daily_loss, trail_step=r.trail_step, warning_at=r.warning_at,
            max_loss_days=r.max_loss_days, max_lots_per_order=r.max_lots_per_order,
            max_notional_per_order=r.max_notional_per_order, max_open_positions=r.max_open_positions,
            max_entries_per_second=r.max_entries_per_second, max_entries_per_minute=r.max_entries_per_minute,
            enforce_trading_hours=trading_hours_enforced(r.enforce_trading_hours, b.mode),
            square_off=tuple((exch, parse_hhmm(text)) for exch, text in sorted(
                (r.square_off_time or (DEFAULT_SQUARE_OFF if trading_hours_enforced(
                    r.enforce_trading_hours, b.mode) else {})).items())),
        )

    def square_off_time(self, exchange: str) -> time | None:
        return dict(self.square_off).get(exchange)

    def as_dict(self) -> dict:
        data = asdict(self)
        data["square_off_time"] = {exch: t.strftime("%H:%M") for exch, t in self.square_off}
        data.pop("square_off")
        return data


# ---- the core -------------------------------------------------------------------------------------

class RiskCore:
    """Risk state of one client_id. Mutating calls mark the keys they changed in `dirty`."""

    def __init__(self, limits: Limits, *, mode: Mode | None = None, streak: Streak | None = None,
                 days: Mapping[date, DayState] | None = None, jobs: Iterable[FlattenJob] = ()):
        self.limits = limits
        self.mode = mode or Mode()
        self.streak = streak or Streak()
        self.days: dict[date, DayState] = dict(days or {})
        self.day: DayState | None = None
        self.jobs: list[FlattenJob] = list(jobs)
        self.rates = RateWindow()
        self.dirty: set[str] = set()
        # Keys whose only change is the PnL of an ordinary read: saved at a throttled pace (every write of
        # another connection can make a StoreActor transaction fail with SQLITE_BUSY_SNAPSHOT).
        self.soft: set[str] = set()

    # ---- persistence ----------------------------------------------------------------------------

    @classmethod
    def load(cls, limits: Limits, rows: Mapping[str, str]) -> RiskCore:
        mode = Mode.from_json(rows["trading_state"]) if "trading_state" in rows else None
        streak = Streak.from_json(rows["streak"]) if "streak" in rows else None
        days = {}
        for key, value in rows.items():
            if key.startswith("day:"):
                day = date.fromisoformat(key[4:])
                days[day] = DayState.from_json(day, value)
        jobs = [FlattenJob.from_dict(j) for j in json.loads(rows["flatten"]).get("jobs", [])] if "flatten" in rows else []
        return cls(limits, mode=mode, streak=streak, days=days, jobs=jobs)

    def take_dirty(self, soft: bool = True) -> dict[str, str]:
        """The changed keys with their JSON values (and forget them); `soft=False` leaves PnL-only changes."""
        keys = self.dirty | self.soft if soft else self.dirty
        out = {}
        for key in sorted(keys):
            if key == "trading_state":
                out[key] = self.mode.to_json()
            elif key == "streak":
                out[key] = self.streak.to_json()
            elif key == "flatten":
                out[key] = json.dumps({"jobs": [j.as_dict() for j in self.jobs]})
            elif key.startswith("day:"):
                out[key] = self.days[date.fromisoformat(key[4:])].to_json()
        self.dirty.clear()
        self.soft -= keys
        return out

    # ---- the day --------------------------------------------------------------------------------

    def roll(self, now: datetime) -> list[RiskEvent]:
        """Make `now`'s trading day current; on a new day evaluate the loss-day streak (once per day)."""
        today = trading_day(now)
        events: list[RiskEvent] = []
        if self.day is None or self.day.day != today:
            if self.day is not None and self.day.key in self.soft:
                self.dirty.add(self.day.key)  # the closing PnL of a day counts for the loss-day streak
            if self.day is not None and self.day.pnl is not None:
                events.append(RiskEvent(kind="DAY_CLOSED", text=f"Trading day {self.day.day} closed with PnL "
                                        f"{_money(self.day.pnl)}"))
            self.day = self.days.get(today)
            if self.day is None:
                self.day = self.days[today] = DayState(today)
                self.dirty.add(self.day.key)
            # A flatten job belongs to its own trading day: EXIT intents of an earlier day are never sent.
            kept = [j for j in self.jobs if _day_of(j.started_at) == today]
            if len(kept) != len(self.jobs):
                events.append(RiskEvent(kind="FLATTEN_EXPIRED", text=f"{len(self.jobs) - len(kept)} flatten job(s) "
                                        f"of an earlier trading day dropped; check the positions they left"))
                self.jobs = kept
                self.dirty.add("flatten")
        if self.limits.max_loss_days > 0 and self.streak.evaluated_for != today:
            history = {d: s.pnl for d, s in self.days.items()}
            count, last = loss_streak(history, today, self.streak.reset_after)
            self.streak.loss_days = count
            self.streak.evaluated_for = today
            if count >= self.limits.max_loss_days and last is not None:
                self.streak.cooldown_until = cooldown_until(last)
                self.streak.reset_after = last
                self.streak.loss_days = 0
                if today < self.streak.cooldown_until:
                    events.append(RiskEvent(kind="COOLDOWN", text=f"{count} consecutive loss days (last {last}): "
                                            f"no entries until {self.streak.cooldown_until}"))
            self.dirty.add("streak")
        return events

    def in_cooldown(self, today: date) -> bool:
        s = self.streak
        return (s.cooldown_until is not None and today < s.cooldown_until
                and (s.reset_after is None or today > s.reset_after))

    def loss_floor(self) -> float | None:
        return loss_floor(self.limits.max_daily_loss, self.limits.trail_step, self.day.peak if self.day else 0.0)

    def loss_limit_hit(self) -> bool:
        floor = self.loss_floor()
        return floor is not None and self.day is not None and self.day.pnl is not None and self.day.pnl <= floor

    def on_positions(self, rows, ok: bool, now: datetime) -> list[RiskEvent]:
        """A PositionBook read. A failed or empty read never changes the PnL (the last known one is kept).

        Returns the events: FLOOR_RAISED, WARNING (once per trail level), BREACH (once per day).
        """
        events = self.roll(now)
        rows = list(rows or ())
        if not ok or not rows:
            return events
        if self.limits.enforce_trading_hours and ist(now).time() < PNL_DAY_START:
            return events
        day, lim = self.day, self.limits
        pnl = positions_pnl(rows)
        level_before = trail_level(day.peak, lim.trail_step)
        if (pnl, max(day.peak, pnl, 0.0)) != (day.pnl, day.peak):
            self.soft.add(day.key)  # the time of an unchanged read is kept in memory only
        day.pnl, day.pnl_at = pnl, _iso(now)
        day.peak = max(day.peak, pnl, 0.0)
        floor = self.loss_floor()
        if floor is None:
            return events
        level = trail_level(day.peak, lim.trail_step)
        if level > level_before:
            self.dirty.add(day.key)
            events.append(RiskEvent(kind="FLOOR_RAISED", text=f"Loss floor raised to {_money(floor)} "
                                    f"(peak PnL {_money(day.peak)})"))
        if day.breached_at is None and pnl <= floor:
            day.breached_at, day.breach_pnl = _iso(now), pnl
            self.dirty.add(day.key)
            events.append(RiskEvent(kind="BREACH", text=f"Daily max loss hit: PnL {_money(pnl)} <= floor "
                                    f"{_money(floor)}. Entries HALTED for the day; flattening."))
        elif day.breached_at is None and lim.warning_at < 1 and day.warned_level != level:
            warn = warning_floor(lim.max_daily_loss, lim.trail_step, day.peak, lim.warning_at)
            if pnl <= warn:
                day.warned_level = level
                self.dirty.add(day.key)
                used = (level - pnl) / lim.max_daily_loss
                events.append(RiskEvent(kind="WARNING", text=f"Risk warning: PnL {_money(pnl)} is {used:.0%} of the "
                                        f"way to the loss floor {_money(floor)} (warning at {lim.warning_at:.0%})"))
        return events

    # ---- the trading state ----------------------------------------------------------------------

    def effective(self, now: datetime) -> tuple[str, str | None]:
        """(state, reason): the most restrictive of today's breach, a cooldown and the operator's mode."""
        today = trading_day(now)
        day = self.days.get(today)
        if day is not None and day.breached_at:
            return HALTED, DAILY_LOSS_HIT
        if self.in_cooldown(today):
            return HALTED, LOSS_DAYS_COOLDOWN
        if self.mode.state == HALTED:
            return HALTED, self.mode.reason or KILL_SWITCH
        if self.mode.state == REDUCING:
            return REDUCING, REDUCING_ONLY
        return ACTIVE, None

    def set_mode(self, state: str, reason: str | None, now: datetime) -> RiskEvent | None:
        if (self.mode.state, self.mode.reason) == (state, reason):
            return None
        self.mode = Mode(state, reason, _iso(now))
        self.dirty.add("trading_state")
        return RiskEvent(kind="MODE", text=f"Trading mode set to {state}" + (f" ({reason})" if reason else ""))

    def halt(self, now: datetime, reason: str = KILL_SWITCH) -> RiskEvent | None:
        return self.set_mode(HALTED, reason, now)

    def reduce(self, now: datetime) -> RiskEvent | None:
        if self.mode.state == HALTED:
            return None  # HALTED is stricter; reduce does not loosen it
        return self.set_mode(REDUCING, None, now)

    def resume(self, now: datetime) -> RiskEvent | None:
        """Clears the operator's mode. A breach of today or a cooldown still holds (see effective())."""
        return self.set_mode(ACTIVE, None, now)

    # ---- the entry checks -----------------------------------------------------------------------

    def check_entry(self, order: OrderSnapshot, facts: Callable[[OrderSnapshot], OrderFacts],
                    now: datetime) -> str | None:
        """The per-order limits: trading hours, square-off time, lots, notional."""
        lim = self.limits
        if lim.enforce_trading_hours and not in_session(order.exchange, now):
            return OUTSIDE_TRADING_HOURS
        cutoff = lim.square_off_time(order.exchange)
        if cutoff is not None and ist(now).time() >= cutoff:
            return AFTER_SQUARE_OFF
        if lim.max_lots_per_order > 0 or lim.max_notional_per_order > 0:
            known = facts(order)
            if lim.max_lots_per_order > 0 and lots(order.quantity, known.lot_size) > lim.max_lots_per_order:
                return MAX_LOTS_EXCEEDED
            if lim.max_notional_per_order > 0:
                price = reference_price(order, known.last_price)
                if price is None:
                    return PRICE_UNKNOWN
                if order.quantity * price > lim.max_notional_per_order:
                    return MAX_NOTIONAL_EXCEEDED
        return None

    def check_alert(self, orders: Iterable[OrderSnapshot], facts: Callable[[OrderSnapshot], OrderFacts],
                    open_keys: set[tuple[str, str, str]], now: datetime) -> dict[str, str]:
        """Block reasons by command_id for the ENTRY legs of one alert; EXIT legs always pass.

        The entry legs of an alert pass or fail together (a hedged spread must not go out one-legged): when
        one leg is blocked the others get OTHER_LEG_BLOCKED. Passing entries are counted in the rate window.
        open_keys: (exchange, symbol, product) of open positions and admitted entries in flight.
        """
        entries = [o for o in orders if o.execution_type == "ENTRY"]
        if not entries:
            return {}
        self.roll(now)
        lim = self.limits
        state, reason = self.effective(now)
        if state != ACTIVE:
            return {o.command_id: reason or KILL_SWITCH for o in entries}
        if self.loss_limit_hit():
            return {o.command_id: DAILY_LOSS_HIT for o in entries}
        blocked: dict[str, str] = {}
        for order in entries:
            why = self.check_entry(order, facts, now)
            if why:
                blocked[order.command_id] = why
                break
        if not blocked:
            now_s = now.timestamp()
            per_second, per_minute = self.rates.counts(now_s)
            if lim.max_entries_per_second > 0 and per_second + len(entries) > lim.max_entries_per_second:
                blocked = {o.command_id: ENTRY_RATE_PER_SECOND for o in entries}
            elif lim.max_entries_per_minute > 0 and per_minute + len(entries) > lim.max_entries_per_minute:
                blocked = {o.command_id: ENTRY_RATE_PER_MINUTE for o in entries}
        if not blocked and lim.max_open_positions > 0:
            wanted = open_keys | {(o.exchange, o.symbol, o.product) for o in entries}
            if len(wanted) > lim.max_open_positions:
                blocked = {o.command_id: MAX_OPEN_POSITIONS for o in entries}
        if blocked:
            return {o.command_id: blocked.get(o.command_id, OTHER_LEG_BLOCKED) for o in entries}
        self.rates.record(now.timestamp(), len(entries))
        return {}

    # ---- square-off and flatten jobs ------------------------------------------------------------

    def due_square_offs(self, now: datetime) -> list[str]:
        """Exchanges whose square-off time has come today and that were not squared off yet (marks them)."""
        self.roll(now)
        local = ist(now)
        due = [exch for exch, cutoff in self.limits.square_off
               if is_trading_day(local.date()) and local.time() >= cutoff and exch not in self.day.squared_off]
        if due:
            self.day.squared_off.extend(due)
            self.dirty.add(self.day.key)
        return due

    def add_job(self, job: FlattenJob) -> bool:
        """Start a flatten job unless a running one already covers it. Returns True when added.

        A covering job is re-armed instead: it takes the new job's start (so what was entered since its own
        start is now its to exit) and its rounds begin again."""
        covering = [j for j in self.jobs if j.covers(job)]
        for j in covering:
            if job.orders_before and job.orders_before > j.orders_before:
                j.started_at, j.orders_before = job.started_at, job.orders_before
                j.rounds = j.idle_reads = 0
                self.dirty.add("flatten")
        if covering:
            return False
        self.jobs = [j for j in self.jobs if not job.covers(j)] + [job]
        self.dirty.add("flatten")
        return True

    def end_job(self, job: FlattenJob) -> None:
        self.jobs = [j for j in self.jobs if j is not job]
        self.dirty.add("flatten")

    def stop_jobs(self, *, manual_only: bool = False) -> list[FlattenJob]:
        """End the running jobs (only the operator's MANUAL ones with manual_only, as resume does: a breach's or
        a square-off's flatten is not the operator's to take back). Returns the jobs ended."""
        ended = [j for j in self.jobs if not manual_only or j.reason == "MANUAL"]
        if ended:
            self.jobs = [j for j in self.jobs if j not in ended]
            self.dirty.add("flatten")
        return ended

    def stamp_jobs(self, started_at: str, orders_before: str) -> None:
        """Jobs persisted before jobs recorded their start count as started now (at load), so they are kept
        today and never take an entry registered after this moment."""
        for job in self.jobs:
            if not job.started_at or not job.orders_before:
                job.started_at = job.started_at or started_at
                job.orders_before = job.orders_before or orders_before
                self.dirty.add("flatten")

    # ---- the read view --------------------------------------------------------------------------

    def view(self, now: datetime) -> dict:
        self.roll(now)
        lim, day = self.limits, self.day
        state, reason = self.effective(now)
        floor = self.loss_floor()
        pnl = day.pnl
        per_second, per_minute = self.rates.counts(now.timestamp())
        return {
            "state": state,
            "reason": reason,
            "mode": self.mode.state,
            "day": day.day.isoformat(),
            "pnl": pnl if pnl is not None else 0.0,
            "pnl_known": pnl is not None,
            "pnl_at": day.pnl_at,
            "max_loss": lim.max_daily_loss,
            "peak_pnl": day.peak,
            "trail_level": trail_level(day.peak, lim.trail_step),
            "loss_floor": floor,
            "headroom": (pnl if pnl is not None else 0.0) - floor if floor is not None else None,
            "warned": day.warned_level is not None,
            "breached_at": day.breached_at,
            "loss_days": self.streak.loss_days,
            "cooldown_until": self.streak.cooldown_until.isoformat() if self.in_cooldown(day.day) else None,
            "entries_last_second": per_second,
            "entries_last_minute": per_minute,
            "limits": lim.as_dict(),
            "flatten": [j.as_dict() for j in self.jobs],
        }


def _money(value: float | None) -> str:
    return "unknown" if value is None else f"{value:,.2f}"


# ---- the flatten planner --------------------------------------------------------------------------

def _get(obj: Any, name: str, default: Any = None) -> Any:
    return obj.get(name, default) if isinstance(obj, Mapping) else getattr(obj, name, default)


def _toward_zero(value: int, bound: int) -> int:
    """`value` kept on the side of zero where `bound` is and never beyond it (0 when bound is 0)."""
    if bound > 0:
        return max(0, min(value, bound))
    if bound < 0:
        return min(0, max(value, bound))
    return 0


def plan_flatten(position_rows: Iterable[Mapping[str, Any]], open_orders: Iterable[Any],
                 ledger: Iterable[Mapping[str, Any]] = (), *, strategy: str | None = None,
                 exchange: str | None = None, products: Iterable[str] = INTRADAY_PRODUCTS,
                 orders_before: str | None = None,
                 later_entries: Iterable[Mapping[str, Any]] = ()) -> FlattenPlan:
    """One round of flattening, decided from the broker's PositionBook, our open orders and our ledger.

    position_rows: PositionBook rows (exch, tsym, prd, netqty), the broker's truth of what is held.
    open_orders:   our non-terminal orders (command_id, source, strategy_name, execution_type, exchange,
                   symbol, product, status, broker_order_id, created_at), rows of `orders` or OrderSnapshots.
    ledger:        our per-strategy positions from our own fills (storage.queries.strategy_positions()).
    orders_before: the job's start (wall clock, as orders' created_at); None: every order is the job's.
    later_entries: the per-strategy positions of ENTRY orders created at or after orders_before (same shape
                   as ledger). They are taken off the broker's rows and off the ledger (never past zero, never
                   across it), so a flatten never exits a position opened after it started. Exits registered
                   after the start stay counted: an exit only ever reduces what the job has to exit.

    - Every open order of ours in scope (entries and exits alike, except CNC and the service's own exits)
      is cancelled: a resting exit left behind would fill after the flatten and open a reverse position.
    - A position is exited only when no order of that strategy on that symbol is open or in flight (the
      guard would refuse it as a duplicate); it is retried on a later round.
    - Each broker position is split among the strategies whose ledger holds it with the same sign; exits
      go through the normal pipeline (guard resolves them again against the ledger, so a stale PositionBook
      can never make an exit larger than what a strategy holds). What no strategy holds is a Leftover.
    """
    wanted_products = {product_name(p) for p in products}

    def in_scope(exch: str, product: str) -> bool:
        return (exchange is None or exch == exchange) and product in wanted_products

    cancels: list[CancelIntent] = []
    waiting: set[str] = set()
    busy: set[tuple[str, str, str]] = set()  # (strategy, exchange, symbol) with an open order
    risk_busy: set[tuple[str, str]] = set()  # (exchange, symbol) with one of the service's exits in flight
    for o in open_orders:
        exch, symbol, product = _get(o, "exchange"), _get(o, "symbol"), product_name(_get(o, "product"))
        if _get(o, "status") not in OPEN_STATUSES or not in_scope(exch, product):
            continue
        if _get(o, "source") == "risk":
            risk_busy.add((exch, symbol))
            waiting.add(f"{exch}:{symbol}")
            continue
        created = _get(o, "created_at")
        later = bool(orders_before and created and str(created) >= orders_before)
        strat = _get(o, "strategy_name")
        if strategy is not None and strat != strategy:
            continue
        busy.add((strat, exch, symbol))
        if later and _get(o, "execution_type") == "ENTRY":
            # Registered after the job started: never cancelled or waited for on its own. It only defers an
            # exit of the same strategy and symbol (the guard would cancel a resting entry for that exit).
            continue
        waiting.add(f"{exch}:{symbol}")
        broker_id = _get(o, "broker_order_id")
        # A later exit is waited for, not cancelled: it was sent after the flatten began, on purpose.
        if _get(o, "status") in ("SENT_TO_BROKER", "PARTIAL") and broker_id and not later:
            cancels.append(CancelIntent(command_id=_get(o, "command_id"), broker_order_id=broker_id,
                                        strategy_name=strat, exchange=exch, symbol=symbol,
                                        execution_type=_get(o, "execution_type")))

    later_by_strategy: dict[tuple[str, str, str, str], int] = {}
    later_by_key: dict[tuple[str, str, str], int] = {}
    for entry in later_entries:
        key = (entry["exchange"], entry["symbol"], product_name(entry["product"]))
        qty = int(entry["net_qty"])
        later_by_strategy[(entry["strategy_name"], *key)] = later_by_strategy.get((entry["strategy_name"], *key),
                                                                                  0) + qty
        later_by_key[key] = later_by_key.get(key, 0) + qty
    held: dict[tuple[str, str, str], int] = {}
    for row in position_rows:
        key = (str(_get(row, "exch") or ""), str(_get(row, "tsym") or ""), product_name(_get(row, "prd")))
        held[key] = held.get(key, 0) + int(_num(_get(row, "netqty")))
    held = {key: _toward_zero(net - later_by_key.get(key, 0), net) for key, net in held.items()}
    owners: dict[tuple[str, str, str], list[tuple[str, int]]] = {}
    for entry in ledger:
        key = (entry["exchange"], entry["symbol"], product_name(entry["product"]))
        net = int(entry["net_qty"])
        owned = _toward_zero(net - later_by_strategy.get((entry["strategy_name"], *key), 0), net)
        owners.setdefault(key, []).append((entry["strategy_name"], owned))

    exits: list[ExitIntent] = []
    leftovers: list[Leftover] = []
    for (exch, symbol, product), net in sorted(held.items()):
        if net == 0 or not in_scope(exch, product):
            continue
        remaining = net
        for strat, qty in sorted(owners.get((exch, symbol, product), [])):
            if strategy is not None and strat != strategy:
                continue
            if qty * remaining <= 0:
                continue
            take = min(abs(qty), abs(remaining)) * (1 if remaining > 0 else -1)
            remaining -= take
            if (exch, symbol) in risk_busy or (strat, exch, symbol) in busy:
                waiting.add(f"{exch}:{symbol}")
                continue
            exits.append(ExitIntent(strategy_name=strat, exchange=exch, symbol=symbol, product=product,
                                    side="SELL" if take > 0 else "BUY", quantity=abs(take)))
        if remaining and strategy is None and (exch, symbol) not in risk_busy:
            leftovers.append(Leftover(exchange=exch, symbol=symbol, product=product, netqty=remaining))
    return FlattenPlan(cancels=tuple(cancels), exits=tuple(exits), waiting=tuple(sorted(waiting)),
                       leftovers=tuple(leftovers))


def describe_unfinished(plan: FlattenPlan) -> list[str]:
    """What a flatten that gives up leaves behind, one readable item each (for the log and the one notice)."""
    items = [f"{p.exchange}:{p.symbol} {p.product} {p.netqty:+d} held by no strategy" for p in plan.leftovers]
    cancelling = set()
    for c in plan.cancels:
        cancelling.add(f"{c.exchange}:{c.symbol}")
        items.append(f"order {c.command_id} ({c.strategy_name} {c.exchange}:{c.symbol}, broker id "
                     f"{c.broker_order_id}) still open: its cancel was refused or never confirmed")
    for e in plan.exits:
        items.append(f"{e.exchange}:{e.symbol} {e.product} of {e.strategy_name}: {e.side} {e.quantity} "
                     f"still to exit (exits rejected or not filled)")
    items += [f"{w}: an order of ours is still open on it" for w in plan.waiting if w not in cancelling]
    return items
