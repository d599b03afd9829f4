"""The paper exchange's matching engine: pure state, no I/O, no threads, no asyncio.

Every mutating method takes `now` (epoch seconds) and returns the order reports it produced, oldest
first. A report is a SingleOrdHist row (`rpt` = report type, `uid` = owning account); `om_message`
turns one into the WebSocket `om` push. Rows use the broker's wire shapes: every number is a string.

Timing: an order that becomes fillable (accepted, modified, triggered, or crossed by the price) is
scheduled to fill `fill_delay_ms` later; `step(now)` performs what is due, re-checking the price at that
moment. Quantities above `fill_slice_qty` fill in slices spaced by `fill_delay_ms`. The caller drives
time: call `step` when `next_due()` has passed and `tick` every `tick_interval_ms`.

Benchmark instrumentation (`oms bench`): each order carries `arrived_mono` (time.monotonic() when its
PlaceOrder request arrived, set by the server) and `filled_mono` (time.monotonic() when its final fill was
applied); both appear in `all_orders()` (GET /paper/orders) and nowhere in the broker's wire shapes.
"""

from __future__ import annotations

import calendar
import heapq
import random
import re
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import date, datetime, timedelta, timezone

from runtime.config import PaperConfig

IST = timezone(timedelta(hours=5, minutes=30), "IST")

EXCHANGES = ("NSE", "NFO", "BSE", "BFO", "MCX", "CDS")
CASH_EXCHANGES = ("NSE", "BSE")
PRODUCTS = ("C", "M", "I", "B", "H")
PRICE_TYPES = ("LMT", "MKT", "SL-LMT", "SL-MKT")
RETENTIONS = ("DAY", "EOS", "IOC")

PENDING, OPEN, TRIGGER_PENDING = "PENDING", "OPEN", "TRIGGER_PENDING"
COMPLETE, REJECTED, CANCELED = "COMPLETE", "REJECTED", "CANCELED"
TERMINAL = (COMPLETE, REJECTED, CANCELED)

TICK = 0.05
NOT_FOUND = "Rejected : ORA:Order not found"
NOT_FOUND_CANCEL = "Rejected : ORA:Order not found to Cancel"

# Derivative symbols: NAME + DDMMMYY + (C|P + strike | F), e.g. NIFTY29DEC26C25700, NIFTY29DEC26F.
_DERIVATIVE = re.compile(r"^(?P<name>.+?)(?P<expiry>\d{2}[A-Z]{3}\d{2})(?:(?P<opt>[CP])(?P<strike>\d+(?:\.\d+)?)|F)$")
# BSE monthly style: NAME + YY + MMM + strike + CE|PE, e.g. SENSEX26DEC80000CE (expires within that month).
_BSE_MONTHLY = re.compile(r"^(?P<name>[A-Z]+?)(?P<yy>\d{2})(?P<mon>[A-Z]{3})(?P<strike>\d+(?:\.\d+)?)(?P<opt>CE|PE)$")
# Cash symbols: NSE needs a series (INFY-EQ, M&M-EQ); BSE has none.
_NSE_EQUITY = re.compile(r"^[A-Z0-9&][A-Z0-9&._-]*-[A-Z0-9]{1,2}$")
_BSE_EQUITY = re.compile(r"^[A-Z0-9&][A-Z0-9&._-]*$")
_MONTHS = {name.upper(): number for number, name in enumerate(calendar.month_abbr) if name}

# Underlying -> (lot size, freeze quantity), per derivative exchange: the paper exchange's instrument universe.
# A derivative on any other underlying is refused like an unknown scrip. Index figures are the exchange's;
# stock derivatives all get lot 25 / freeze 500 (a paper simplification), MCX and CDS trade in lots (ls 1).
_CONTRACTS = {
    "NIFTY": (65, 1800),
    "BANKNIFTY": (30, 900),
    "FINNIFTY": (60, 1800),
    "MIDCPNIFTY": (120, 2800),
    "NIFTYNXT50": (25, 600),
    "SENSEX": (20, 1000),
    "BANKEX": (30, 900),
}
_STOCK_UNDERLYINGS = frozenset("""
    AXISBANK BAJAJ-AUTO BAJFINANCE BHARTIARTL BPCL CIPLA COALINDIA DRREDDY EICHERMOT GRASIM HCLTECH HDFCBANK
    HDFCLIFE HEROMOTOCO HINDALCO HINDUNILVR ICICIBANK INDUSINDBK INFY ITC JSWSTEEL KOTAKBANK LT M&M MARUTI
    NESTLEIND NTPC ONGC POWERGRID RELIANCE SBILIFE SBIN SUNPHARMA TATACONSUM TATAMOTORS TATASTEEL TCS TECHM
    TITAN ULTRACEMCO UPL WIPRO ADANIENT ADANIPORTS APOLLOHOSP ASIANPAINT BRITANNIA DIVISLAB
""".split())
_UNDERLYINGS = {
    "NFO": {"NIFTY", "BANKNIFTY", "FINNIFTY", "MIDCPNIFTY", "NIFTYNXT50"} | _STOCK_UNDERLYINGS,
    "BFO": {"SENSEX", "BANKEX"},
    "MCX": {"CRUDEOIL", "CRUDEOILM", "GOLD", "GOLDM", "SILVER", "SILVERM", "NATURALGAS", "COPPER", "ZINC"},
    "CDS": {"USDINR", "EURINR", "GBPINR", "JPYINR"},
}
_LOT_IN_LOTS = ("MCX", "CDS")

STATE_FORMAT = 1
# Order numbers / fill ids reserved in the state file ahead of use (skipped after a crash: 8 digits last long).
RESERVE_BLOCK = 10000
_DEFAULT_LOT = 25
_CASH_FREEZE = 100000

# Index level ranges by underlying for futures and indices; the rest start in 20000..26000.
_INDEX_LEVELS = {"BANKNIFTY": (48000.0, 56000.0), "BANKEX": (55000.0, 65000.0), "SENSEX": (75000.0, 85000.0)}

# Well-known index tokens so GetQuotes / touchline on them work before any order: (exch, tsym, token, underlying).
_INDICES = (
    ("NSE", "Nifty 50", "26000", "NIFTY"),
    ("NSE", "Nifty Bank", "26009", "BANKNIFTY"),
    ("NSE", "Nifty Fin Service", "26037", "FINNIFTY"),
    ("BSE", "SENSEX", "1", "SENSEX"),
)


class OrderError(Exception):
    """A modify/cancel the exchange refuses outright: the REST reply is Not_Ok with this emsg."""


class SymbolError(ValueError):
    """A trading symbol the exchange does not know (malformed, unknown underlying)."""


def ist_date(now: float) -> date:
    return datetime.fromtimestamp(now, IST).date()


def _expiry_date(text: str) -> date | None:
    """DDMMMYY -> date; None when it is not a calendar date (32FOO26, 30FEB26)."""
    month = _MONTHS.get(text[2:5])
    if month is None:
        return None
    try:
        return date(2000 + int(text[5:7]), month, int(text[0:2]))
    except ValueError:
        return None


def _without_expiry(tsym: str) -> str:
    """NIFTY29DEC26C25700 -> NIFTYC25700, SENSEX26DEC80000CE -> SENSEX80000CE."""
    match = _DERIVATIVE.match(tsym)
    if match:
        return tsym[:match.start("expiry")] + tsym[match.end("expiry"):]
    match = _BSE_MONTHLY.match(tsym)
    return match.group("name") + match.group("strike") + match.group("opt") if match else tsym


def parse_symbol(exch: str, tsym: str) -> tuple[str, str, date | None]:
    """(kind, underlying, expiry) of a symbol the paper exchange would list on `exch`; SymbolError otherwise.

    Expiry is not checked against today here: a contract that has expired is still a known symbol
    (its orders are refused by `Engine.place`)."""
    if exch in CASH_EXCHANGES:
        pattern = _NSE_EQUITY if exch == "NSE" else _BSE_EQUITY
        if not pattern.match(tsym):
            raise SymbolError(f"Invalid Trading Symbol : {tsym}")
        name = tsym.rsplit("-", 1)[0] if exch == "NSE" else tsym
        return ("INDEX" if name in _CONTRACTS else "EQUITY"), name, None
    match = _DERIVATIVE.match(tsym)
    if match:
        name, expiry = match.group("name"), _expiry_date(match.group("expiry"))
        if expiry is None:
            raise SymbolError(f"Invalid Trading Symbol : {tsym} (expiry {match.group('expiry')} is not a date)")
        strike = match.group("strike")
        kind = "OPTION" if match.group("opt") else "FUTURE"
    else:
        match = _BSE_MONTHLY.match(tsym) if exch == "BFO" else None
        month = _MONTHS.get(match.group("mon")) if match else None
        if month is None:
            raise SymbolError(f"Invalid Trading Symbol : {tsym}")
        name, strike, kind = match.group("name"), match.group("strike"), "OPTION"
        year = 2000 + int(match.group("yy"))
        expiry = date(year, month, calendar.monthrange(year, month)[1])
    if strike is not None and not float(strike) > 0:
        raise SymbolError(f"Invalid Trading Symbol : {tsym} (strike must be positive)")
    if name not in _UNDERLYINGS.get(exch, ()):
        raise SymbolError(f"Invalid Trading Symbol : {tsym} (unknown underlying {name} on {exch})")
    return kind, name, expiry


def to_tick(price: float, tick: float = TICK) -> float:
    return round(round(price / tick) * tick, 2)


def money(value: float) -> str:
    return f"{round(value, 2) + 0.0:.2f}"  # + 0.0: never "-0.00"


def norentm(now: float) -> str:
    """`HH:MM:SS DD-MM-YYYY` (also the format of request_time)."""
    return datetime.fromtimestamp(now, IST).strftime("%H:%M:%S %d-%m-%Y")


def exch_tm(now: float) -> str:
    """`DD-MM-YYYY HH:MM:SS` (exch_tm, fltm)."""
    return datetime.fromtimestamp(now, IST).strftime("%d-%m-%Y %H:%M:%S")


def as_text(value) -> str:
    """A wire field as stripped text (None -> \"\")."""
    return "" if value is None else str(value).strip()


def _number(value) -> float | None:
    """A price field: None for absent / "None" / "" / unparsable."""
    text = as_text(value)
    if text in ("", "None", "null"):
        return None
    try:
        number = float(text)
    except ValueError:
        return None
    return number if number == number else None  # NaN


def _quantity(value) -> int | None:
    text = as_text(value)
    if not text.isdigit():
        return None
    return int(text)


@dataclass
class Instrument:
    exch: str
    tsym: str
    token: str
    kind: str  # OPTION FUTURE INDEX EQUITY
    underlying: str
    ls: int
    ti: float
    frzqty: int
    rng: random.Random
    expiry: date | None = None  # derivatives: the last trading day
    lp: float = 0.0
    o: float = 0.0
    h: float = 0.0
    l: float = 0.0  # noqa: E741 - the broker's field name
    c: float = 0.0
    v: int = 0
    pinned: bool = False  # set by set_ltp: the random walk leaves it alone

    def quote(self) -> dict:
        """GetQuotes / touchline fields, wire-formatted."""
        pc = (self.lp - self.c) / self.c * 100 if self.c else 0.0
        return {
            "exch": self.exch,
            "tsym": self.tsym,
            "token": self.token,
            "lp": money(self.lp),
            "pc": money(pc),
            "v": str(self.v),
            "o": money(self.o),
            "h": money(self.h),
            "l": money(self.l),
            "c": money(self.c),
            "uc": money(to_tick(self.c * 1.2, self.ti)),
            # Options trade down to one tick (as on NSE); other instruments have a 20 % band both ways.
            "lc": money(self.ti if self.kind == "OPTION" else max(self.ti, to_tick(self.c * 0.8, self.ti))),
            "ti": money(self.ti),
            "ls": str(self.ls),
            "pp": "2",
            "frzqty": str(self.frzqty),
            "instname": self.instname,
            "symname": self.underlying,
        }

    def scrip(self) -> dict:
        """A SearchScrip value."""
        return {
            "exch": self.exch,
            "tsym": self.tsym,
            "token": self.token,
            "ls": str(self.ls),
            "ti": money(self.ti),
            "pp": "2",
            "instname": self.instname,
            "symname": self.underlying,
        }

    @property
    def instname(self) -> str:
        index = self.underlying in _CONTRACTS
        return {
            "OPTION": "OPTIDX" if index else "OPTSTK",
            "FUTURE": "FUTIDX" if index else "FUTSTK",
            "INDEX": "UNDIND",
        }.get(self.kind, "EQ")


@dataclass
class Order:
    norenordno: str
    uid: str
    exch: str
    tsym: str
    token: str
    ls: int
    ti: float
    qty: int
    prc: float
    trgprc: float | None
    prd: str
    trantype: str
    prctyp: str
    ret: str
    remarks: str
    dscqty: str
    ordenttm: float
    updated: float
    status: str = PENDING
    triggered: bool = False
    fillshares: int = 0
    fillvalue: float = 0.0
    rejreason: str = ""
    rejby: str = ""
    cancelqty: int = 0
    exchordid: str = ""
    due: float | None = None
    history: list[dict] = field(default_factory=list)
    arrived_mono: float | None = None  # bench instrumentation: PlaceOrder arrival (time.monotonic())
    filled_mono: float | None = None  # bench instrumentation: final fill (time.monotonic())

    @property
    def remaining(self) -> int:
        return self.qty - self.fillshares

    @property
    def avgprc(self) -> float:
        return self.fillvalue / self.fillshares if self.fillshares else 0.0

    @property
    def is_sl(self) -> bool:
        return self.prctyp in ("SL-LMT", "SL-MKT")

    @property
    def is_market(self) -> bool:
        return self.prctyp in ("MKT", "SL-MKT")

    def row(self) -> dict:
        """The OrderBook row (fillshares/avgprc absent until the first fill)."""
        row = {
            "stat": "Ok",
            "norenordno": self.norenordno,
            "uid": self.uid,
            "actid": self.uid,
            "exch": self.exch,
            "tsym": self.tsym,
            "token": self.token,
            "qty": str(self.qty),
            "prc": money(self.prc),
            "prd": self.prd,
            "trantype": self.trantype,
            "prctyp": self.prctyp,
            "ret": self.ret,
            "dscqty": self.dscqty,
            "status": self.status,
            "st_intrn": self.status,
            "remarks": self.remarks,
            "exchordid": self.exchordid,
            "norentm": norentm(self.updated),
            "exch_tm": exch_tm(self.updated),
            "ordenttm": str(int(self.ordenttm)),
            "ls": str(self.ls),
            "ti": money(self.ti),
            "pp": "2",
            "cancelqty": str(self.cancelqty),
            "rejreason": self.rejreason,
            "rejby": self.rejby,
        }
        if self.trgprc is not None:
            row["trgprc"] = money(self.trgprc)
        if self.fillshares:
            row["fillshares"] = str(self.fillshares)
            row["avgprc"] = money(self.avgprc)
        return row


@dataclass
class Position:
    exch: str
    tsym: str
    token: str
    prd: str
    ls: int
    ti: float
    netqty: int = 0
    netavg: float = 0.0
    buyqty: int = 0
    buyamt: float = 0.0
    sellqty: int = 0
    sellamt: float = 0.0
    rpnl: float = 0.0
    cfqty: int = 0  # carried forward from earlier days (signed)

    def carry(self) -> None:
        """A new day: the net position becomes the carried-forward quantity; day figures start at zero."""
        self.cfqty = self.netqty
        self.buyqty = self.sellqty = 0
        self.buyamt = self.sellamt = self.rpnl = 0.0

    def apply(self, signed_qty: int, price: float) -> None:
        """Average-cost accounting: an opening trade moves the average, a closing one realises PnL."""
        if signed_qty > 0:
            self.buyqty += signed_qty
            self.buyamt += signed_qty * price
        else:
            self.sellqty -= signed_qty
            self.sellamt -= signed_qty * price
        if self.netqty == 0 or (self.netqty > 0) == (signed_qty > 0):
            total = abs(self.netqty) + abs(signed_qty)
            self.netavg = (abs(self.netqty) * self.netavg + abs(signed_qty) * price) / total
            self.netqty += signed_qty
            return
        closing = min(abs(signed_qty), abs(self.netqty))
        direction = 1 if self.netqty > 0 else -1
        self.rpnl += closing * (price - self.netavg) * direction
        self.netqty -= closing * direction
        left = abs(signed_qty) - closing
        if left:
            self.netqty = left * (1 if signed_qty > 0 else -1)
            self.netavg = price
        elif self.netqty == 0:
            self.netavg = 0.0

    def urmtom(self, lp: float) -> float:
        return self.netqty * (lp - self.netavg)

    def row(self, lp: float) -> dict:
        return {
            "stat": "Ok",
            "exch": self.exch,
            "tsym": self.tsym,
            "token": self.token,
            "prd": self.prd,
            "netqty": str(self.netqty),
            "netavgprc": money(self.netavg),
            "daybuyqty": str(self.buyqty),
            "daysellqty": str(self.sellqty),
            "daybuyamt": money(self.buyamt),
            "daysellamt": money(self.sellamt),
            "daybuyavgprc": money(self.buyamt / self.buyqty if self.buyqty else 0.0),
            "daysellavgprc": money(self.sellamt / self.sellqty if self.sellqty else 0.0),
            "cfbuyqty": str(max(self.cfqty, 0)),
            "cfsellqty": str(max(-self.cfqty, 0)),
            "lp": money(lp),
            "rpnl": money(self.rpnl),
            "urmtom": money(self.urmtom(lp)),
            "ls": str(self.ls),
            "ti": money(self.ti),
            "mult": "1",
            "prcftr": "1.000000",
            "pp": "2",
        }


@dataclass
class Account:
    uid: str
    cash: float = 0.0
    orders: dict[str, Order] = field(default_factory=dict)  # insertion order = entry order
    trades: list[dict] = field(default_factory=list)
    positions: dict[tuple[str, str, str], Position] = field(default_factory=dict)


# What a snapshot keeps of an order / position (history is rebuilt as one row; bench stamps are not kept).
_ORDER_FIELDS = tuple(f.name for f in fields(Order) if f.name not in ("due", "history", "arrived_mono", "filled_mono"))
_POSITION_FIELDS = tuple(f.name for f in fields(Position))
_LAST_REPORT = {OPEN: "New", TRIGGER_PENDING: "New", COMPLETE: "Fill", REJECTED: "Rejected", CANCELED: "Canceled"}


class Engine:
    """Accounts, instruments, orders and matching for the paper exchange."""

    def __init__(self, config: PaperConfig | None = None, *, seed: int | None = None) -> None:
        self.config = config or PaperConfig()
        self.seed = self.config.seed if seed is None else seed
        self._delay = self.config.fill_delay_ms / 1000.0
        self._rejected_symbols = {s.upper() for s in self.config.reject_symbols}
        self._instruments: dict[tuple[str, str], Instrument] = {}
        self._by_token: dict[tuple[str, str], Instrument] = {}
        self._accounts: dict[str, Account] = {}
        self._orders: dict[str, Order] = {}
        self._active: dict[tuple[str, str], dict[str, Order]] = {}  # live orders per instrument
        self._due: list[tuple[float, int, str]] = []  # heap of (due, seq, norenordno); stale entries skipped
        self._changed: dict[tuple[str, str], Instrument] = {}
        self._seq = {"order": 0, "fill": 0}
        # Numbers up to `_limit` are durably reserved (in the state file); only enforced once `reserve` is set.
        self._limit = {"order": 0, "fill": 0}
        # Set by the server when state is persisted: writes a snapshot (which reserves RESERVE_BLOCK numbers
        # ahead) and commits it. Called before a number beyond the reservation is used, so a crash never
        # makes an order number (or fill id) repeat.
        self.reserve: Callable[[], None] | None = None
        self.dirty = False  # state changed since the last snapshot
        self._day: date | None = None  # the IST trading day the books belong to
        self._heap_seq = 0
        self.mono = time.monotonic  # the clock of the bench timestamps (shared by processes on Linux)
        for exch, tsym, token, underlying in _INDICES:
            self._create(exch, tsym, token=token, kind="INDEX", underlying=underlying)

    # ---------------------------------------------------------------- instruments

    def instrument(self, exch: str, tsym: str) -> Instrument:
        """The instrument, created on first use with a stable token and a seeded initial price.
        Raises SymbolError for a symbol the exchange would not list (see parse_symbol)."""
        found = self._instruments.get((exch, tsym))
        if found is not None:
            return found
        if exch not in EXCHANGES:
            raise SymbolError(f"Invalid Exchange : {exch or 'missing'}")
        kind, underlying, expiry = parse_symbol(exch, tsym)
        return self._create(exch, tsym, kind=kind, underlying=underlying, expiry=expiry)

    def listed(self, exch: str, tsym: str, now: float) -> Instrument:
        """The instrument if the exchange lists it on `now`'s IST day; SymbolError (malformed, unknown underlying,
        expired) otherwise. An expired contract is never created."""
        inst = self._instruments.get((exch, tsym))
        expiry = inst.expiry if inst is not None else None
        if inst is None:
            if exch not in EXCHANGES:
                raise SymbolError(f"Invalid Exchange : {exch or 'missing'}")
            expiry = parse_symbol(exch, tsym)[2]
        if expiry is not None and expiry < ist_date(now):
            raise SymbolError(f"Invalid Trading Symbol : {tsym} expired on {expiry:%d-%m-%Y}")
        return inst or self.instrument(exch, tsym)

    def _create(self, exch: str, tsym: str, *, kind: str, underlying: str, token: str | None = None,
                expiry: date | None = None) -> Instrument:
        if token is None:
            number = zlib.crc32(f"{exch}|{tsym}".encode()) % 900000 + 100000
            while (exch, str(number)) in self._by_token:  # a crc collision: probe (rare)
                number += 1
            token = str(number)
        derivative = kind in ("OPTION", "FUTURE")
        lot, freeze = _CONTRACTS.get(underlying, (_DEFAULT_LOT, _DEFAULT_LOT * 20))
        if not derivative:
            lot, freeze = 1, _CASH_FREEZE
        elif exch in _LOT_IN_LOTS:
            lot, freeze = 1, _CASH_FREEZE
        # Seeded by the symbol without its expiry: a strike starts at the same price whatever the month, so
        # runs (and tests) do not change behaviour as the calendar moves.
        rng = random.Random(f"{self.seed}|{exch}|{_without_expiry(tsym) if expiry else tsym}")
        if kind == "OPTION":
            low, high = 50.0, 500.0
        elif kind in ("FUTURE", "INDEX"):
            low, high = _INDEX_LEVELS.get(underlying, (20000.0, 26000.0))
        else:
            low, high = 100.0, 3000.0
        price = to_tick(rng.uniform(low, high))
        inst = Instrument(exch, tsym, token, kind, underlying, lot, TICK, freeze, rng, expiry,
                          price, price, price, price, price)
        self._instruments[(exch, tsym)] = inst
        self._by_token[(exch, token)] = inst
        return inst

    def find_token(self, exch: str, token: str) -> Instrument | None:
        return self._by_token.get((exch, str(token)))

    def search(self, exch: str, text: str, now: float | None = None) -> list[Instrument]:
        """Known instruments of `exch` whose symbol contains `text`; an unknown full symbol that the exchange
        would list (and, given `now`, that has not expired) is created."""
        needle = text.strip().upper()
        if not needle:
            return []
        today = ist_date(now) if now is not None else None
        found = [i for i in self._instruments.values() if i.exch == exch and needle in i.tsym.upper()
                 and not (today and i.expiry and i.expiry < today)]  # an expired contract is no longer listed
        if found or exch not in EXCHANGES:
            return found
        if exch == "NSE" and "-" not in needle:
            needle = f"{needle}-EQ"
        try:
            return [self.listed(exch, needle, now) if now is not None else self.instrument(exch, needle)]
        except SymbolError:
            return []

    def drain_changed(self) -> list[Instrument]:
        """Instruments whose quote (lp, volume) changed since the last call."""
        changed = list(self._changed.values())
        self._changed.clear()
        return changed

    def set_ltp(self, exch: str, tsym: str, lp: float, now: float, *, walk: bool = False) -> list[dict]:
        """Set a last price (pins it against the random walk unless `walk`) and match at once."""
        inst = self.instrument(exch, tsym)
        inst.pinned = not walk
        self.dirty = True
        self._move(inst, to_tick(max(float(lp), inst.ti), inst.ti))
        reports: list[dict] = []
        self._on_price(inst, now, reports)
        return reports + self.step(now)

    def tick(self, now: float) -> list[dict]:
        """One random-walk step of every unpinned instrument, then matching."""
        reports: list[dict] = []
        volatility = self.config.walk_volatility
        if volatility > 0:
            for inst in list(self._instruments.values()):
                if inst.pinned:
                    continue
                step = inst.lp * volatility * inst.rng.gauss(0.0, 1.0)
                price = to_tick(max(inst.ti, inst.lp + step), inst.ti)
                if price != inst.lp:
                    self._move(inst, price)
                    self._on_price(inst, now, reports)
        return reports + self.step(now)

    def _move(self, inst: Instrument, price: float) -> None:
        if price == inst.lp:
            return
        inst.lp = price
        inst.h = max(inst.h, price)
        inst.l = min(inst.l, price)
        self._changed[(inst.exch, inst.tsym)] = inst

    # ---------------------------------------------------------------- numbering, days, persistence

    def _take(self, name: str) -> int:
        """The next order number / fill id, never one that a restart could hand out again."""
        number = self._seq[name] + 1
        if self.reserve is not None and number > self._limit[name]:
            self.reserve()  # raises if the reservation cannot be written: nothing has been mutated yet
            if number > self._limit[name]:
                raise RuntimeError(f"paper exchange: no {name} numbers reserved")
        self._seq[name] = number
        self.dirty = True
        return number

    def roll(self, now: float) -> list[dict]:
        """Start a new IST trading day when `now` is past the current one: open orders are cancelled (their
        Canceled reports are returned), order and trade books start empty, open positions carry forward
        (cfbuyqty / cfsellqty) with day quantities and realised PnL reset (the day's PnL settles into cash)."""
        today = ist_date(now)
        if self._day is None:
            self._day = today
            self.dirty = True
            return []
        if today <= self._day:
            return []
        reports: list[dict] = []
        for order in list(self._orders.values()):
            if order.status not in TERMINAL:
                self._finish_cancel(order, now, reports)
        self._orders.clear()
        self._active.clear()
        self._due.clear()
        for account in self._accounts.values():
            account.orders.clear()
            account.trades.clear()
            for key, position in list(account.positions.items()):
                account.cash += position.rpnl
                if position.netqty == 0:
                    del account.positions[key]
                else:
                    position.carry()
        for inst in self._instruments.values():
            inst.c = inst.o = inst.h = inst.l = inst.lp
            inst.v = 0
        self._day = today
        self.dirty = True
        return reports

    def snapshot(self) -> dict:
        """Everything a restart needs, as JSON-able data. Reserves RESERVE_BLOCK numbers ahead of use:
        call `commit(snapshot)` once it is durably written."""
        return {
            "format": STATE_FORMAT,
            "day": self._day.isoformat() if self._day else None,
            "reserved": {name: seq + RESERVE_BLOCK for name, seq in self._seq.items()},
            "instruments": [
                [i.exch, i.tsym, i.token, i.lp, i.o, i.h, i.l, i.c, i.v, i.pinned] for i in self._instruments.values()
            ],
            "accounts": {
                uid: {
                    "cash": account.cash,
                    "orders": [{name: getattr(order, name) for name in _ORDER_FIELDS} for order in account.orders.values()],
                    "trades": account.trades,
                    "positions": [{name: getattr(p, name) for name in _POSITION_FIELDS} for p in account.positions.values()],
                }
                for uid, account in self._accounts.items()
            },
        }

    def commit(self, snapshot: dict) -> None:
        """The snapshot is on disk: its reservation may be used, and nothing newer is unsaved unless changed since."""
        for name, limit in snapshot["reserved"].items():
            self._limit[name] = max(self._limit[name], limit)

    def restore(self, state: dict, now: float) -> list[dict]:
        """Load a snapshot into a fresh engine (KeyError / TypeError / ValueError if it is malformed), then roll
        to `now`'s day. Numbering resumes after the saved reservation: numbers reserved but perhaps used
        before a crash are skipped."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"unknown state format {state.get('format')!r}")
        self._day = date.fromisoformat(state["day"]) if state.get("day") else None
        for name in self._seq:
            self._seq[name] = self._limit[name] = int(state["reserved"][name])
        for exch, tsym, token, lp, o, h, l, c, v, pinned in state["instruments"]:  # noqa: E741
            inst = self._instruments.get((exch, tsym))
            if inst is None:
                try:
                    kind, underlying, expiry = parse_symbol(exch, tsym)
                except SymbolError:
                    continue  # no longer in the universe
                inst = self._create(exch, tsym, kind=kind, underlying=underlying, token=token, expiry=expiry)
            inst.lp, inst.o, inst.h, inst.l, inst.c, inst.v, inst.pinned = (
                float(lp), float(o), float(h), float(l), float(c), int(v), bool(pinned))
        for uid, saved in state["accounts"].items():
            account = self.account(uid)
            account.cash = float(saved["cash"])
            for fields_ in saved["orders"]:
                order = Order(**fields_)
                order.history = [{**order.row(), "rpt": _LAST_REPORT.get(order.status, "New")}]
                self._orders[order.norenordno] = order
                account.orders[order.norenordno] = order
                if order.status not in TERMINAL and (order.exch, order.tsym) in self._instruments:
                    self._active.setdefault((order.exch, order.tsym), {})[order.norenordno] = order
            account.trades = list(saved["trades"])
            for fields_ in saved["positions"]:
                position = Position(**fields_)
                account.positions[(position.exch, position.tsym, position.prd)] = position
        reports: list[dict] = []
        for live in self._active.values():
            for order in list(live.values()):
                self._evaluate(order, now, reports)  # resting orders match again from now on
        self.dirty = False
        return reports + self.roll(now)

    # ---------------------------------------------------------------- orders

    def account(self, uid: str) -> Account:
        found = self._accounts.get(uid)
        if found is None:
            found = self._accounts[uid] = Account(uid, cash=self.config.cash)
            self.dirty = True
        return found

    def place(self, uid: str, data: dict, now: float) -> tuple[Order, list[dict]]:
        """PlaceOrder: always creates an order (REJECTED with a reason when the input is invalid)."""
        exch = as_text(data.get("exch")).upper()
        tsym = as_text(data.get("tsym"))
        inst, symbol_error = None, ""
        if exch in EXCHANGES and tsym:
            try:
                inst = self.listed(exch, tsym, now)
            except SymbolError as exc:
                symbol_error = str(exc)
        qty = _quantity(data.get("qty"))
        prctyp = as_text(data.get("prctyp")).upper()
        remarks = data.get("remarks")
        seq = self._take("order")
        day = datetime.fromtimestamp(now, IST).strftime("%y%m%d")
        order = Order(
            norenordno=f"{day}{seq:08d}",
            uid=uid,
            exch=exch,
            tsym=tsym,
            token=inst.token if inst else "",
            ls=inst.ls if inst else 1,
            ti=inst.ti if inst else TICK,
            qty=qty or 0,
            prc=0.0 if prctyp in ("MKT", "SL-MKT") else (_number(data.get("prc")) or 0.0),
            trgprc=_number(data.get("trgprc")) if prctyp in ("SL-LMT", "SL-MKT") else None,
            prd=as_text(data.get("prd")).upper(),
            trantype=as_text(data.get("trantype")).upper(),
            prctyp=prctyp,
            ret=as_text(data.get("ret")).upper() or "DAY",
            remarks="" if remarks is None else str(remarks),
            dscqty=as_text(data.get("dscqty")) or "0",
            ordenttm=now,
            updated=now,
        )
        self._orders[order.norenordno] = order
        self.account(uid).orders[order.norenordno] = order
        reports = [self._report(order, "NewAck", now)]
        reason = self._validate(order, inst, qty, data) or symbol_error
        if reason:
            order.status = REJECTED
            order.rejreason = reason
            order.rejby = "RMS"
            reports.append(self._report(order, "Rejected", now))
            return order, reports
        reports.append(self._report(order, "PendingNew", now))
        order.exchordid = f"{1100000000000000 + seq}"
        self._active.setdefault((exch, tsym), {})[order.norenordno] = order
        if order.is_sl and not self._triggered(order, inst.lp):
            order.status = TRIGGER_PENDING
        else:
            order.status = OPEN
            order.triggered = order.is_sl
        reports.append(self._report(order, "New", now))
        self._evaluate(order, now, reports)
        return order, reports + self.step(now)

    def _validate(self, order: Order, inst: Instrument | None, qty: int | None, data: dict) -> str:
        if order.exch not in EXCHANGES:
            return f"Invalid Exchange : {order.exch or 'missing'}"
        if not order.tsym:
            return "Invalid Trading Symbol"
        if order.trantype not in ("B", "S"):
            return "Invalid Buy/Sell Indicator"
        if order.prd not in PRODUCTS:
            return f"Invalid Product : {order.prd or 'missing'}"
        if order.prctyp not in PRICE_TYPES:
            return f"Invalid Price Type : {order.prctyp or 'missing'}"
        if order.ret not in RETENTIONS:
            return f"Invalid Retention : {order.ret}"
        if qty is None:
            return f"Invalid Quantity : {as_text(data.get('qty')) or 'missing'}"
        if qty <= 0:
            return "Quantity should be greater than zero"
        if order.prctyp in ("LMT", "SL-LMT") and order.prc <= 0:
            return "Invalid Price : price should be greater than zero"
        if order.is_sl and (order.trgprc is None or order.trgprc <= 0):
            return "Invalid Trigger Price : trigger price should be greater than zero"
        if order.prctyp == "SL-LMT":
            if order.trantype == "B" and order.trgprc > order.prc:
                return "Trigger price should be less than or equal to limit price for a buy order"
            if order.trantype == "S" and order.trgprc < order.prc:
                return "Trigger price should be greater than or equal to limit price for a sell order"
        if self.config.reject_market_orders and order.is_market:
            return "RMS:Market orders are not allowed for API orders, use a limit order"
        if order.tsym.upper() in self._rejected_symbols:
            return f"RMS:Blocked for trading : {order.exch} {order.tsym}"
        if self.config.enforce_lot_tick and inst is not None:
            if qty % inst.ls:
                return f"Quantity should be a multiple of lot size {inst.ls}"
            if qty > inst.frzqty:
                return f"Quantity exceeds freeze quantity {inst.frzqty}"
            for price in (order.prc, order.trgprc or 0.0):
                if abs(to_tick(price, inst.ti) - price) > 1e-6:
                    return f"Price should be a multiple of tick size {money(inst.ti)}"
        return ""

    def modify(self, uid: str, data: dict, now: float) -> list[dict]:
        """ModifyOrder: qty is the TOTAL order quantity. Raises OrderError for a refused modification."""
        order = self._live_order(uid, as_text(data.get("norenordno")), NOT_FOUND)
        qty = _quantity(data.get("qty")) if "qty" in data else order.qty
        prctyp = as_text(data.get("prctyp")).upper() or order.prctyp
        prc = _number(data.get("prc")) if "prc" in data else order.prc
        trgprc = _number(data.get("trgprc")) if "trgprc" in data else order.trgprc
        if qty is None or qty <= order.fillshares:
            raise OrderError(f"Rejected : Quantity should be greater than filled quantity {order.fillshares}")
        if prctyp not in PRICE_TYPES:
            raise OrderError(f"Rejected : Invalid Price Type : {prctyp}")
        if prctyp in ("LMT", "SL-LMT") and (prc is None or prc <= 0):
            raise OrderError("Rejected : Invalid Price")
        if prctyp in ("SL-LMT", "SL-MKT") and (trgprc is None or trgprc <= 0):
            raise OrderError("Rejected : Invalid Trigger Price")
        if self.config.reject_market_orders and prctyp in ("MKT", "SL-MKT"):
            raise OrderError("Rejected : RMS:Market orders are not allowed for API orders, use a limit order")
        reports = [self._report(order, "ModAck", now)]
        was_sl = order.is_sl
        order.qty = qty
        order.prctyp = prctyp
        order.prc = 0.0 if prctyp in ("MKT", "SL-MKT") else prc
        order.trgprc = trgprc if prctyp in ("SL-LMT", "SL-MKT") else None
        if not order.is_sl:
            order.status, order.triggered = OPEN, False
        elif not was_sl or not order.triggered:
            order.status, order.triggered = TRIGGER_PENDING, False
        order.due = None  # re-evaluated below against the new terms
        reports.append(self._report(order, "Replaced", now))
        self._evaluate(order, now, reports)
        return reports + self.step(now)

    def cancel(self, uid: str, norenordno: str, now: float) -> list[dict]:
        """CancelOrder. Raises OrderError when the order is unknown or no longer open."""
        order = self._live_order(uid, as_text(norenordno), NOT_FOUND_CANCEL)
        reports = [self._report(order, "PendingCancel", now)]
        self._finish_cancel(order, now, reports)
        return reports

    def forget(self, norenordno: str) -> bool:
        """Test-only (`POST /paper/forget`): the exchange loses an order, as a broker that no longer knows an
        accepted order would. It leaves the account's books (OrderBook, SingleOrdHist, cancel, modify) and stops
        matching; fills it already had stay in the trades and positions. False if there is no such order."""
        order = self._orders.get(as_text(norenordno))
        if order is None or self.account(order.uid).orders.pop(order.norenordno, None) is None:
            return False
        order.due = None  # its heap entries are stale now (the global index keeps it for `next_due`)
        self._retire(order)
        return True

    def _live_order(self, uid: str, norenordno: str, emsg: str) -> Order:
        order = self.account(uid).orders.get(norenordno)
        if order is None or order.status in TERMINAL:
            raise OrderError(emsg)
        return order

    def _finish_cancel(self, order: Order, now: float, reports: list[dict]) -> None:
        order.status = CANCELED
        order.cancelqty = order.remaining
        order.due = None
        self._retire(order)
        reports.append(self._report(order, "Canceled", now))

    def _retire(self, order: Order) -> None:
        live = self._active.get((order.exch, order.tsym))
        if live is not None:
            live.pop(order.norenordno, None)

    # ---------------------------------------------------------------- matching

    @staticmethod
    def _triggered(order: Order, lp: float) -> bool:
        return lp >= order.trgprc if order.trantype == "B" else lp <= order.trgprc

    @staticmethod
    def _fillable(order: Order, lp: float) -> bool:
        if order.is_market:
            return True
        return lp <= order.prc if order.trantype == "B" else lp >= order.prc

    def _on_price(self, inst: Instrument, now: float, reports: list[dict]) -> None:
        for order in list(self._active.get((inst.exch, inst.tsym), {}).values()):
            self._evaluate(order, now, reports)

    def _evaluate(self, order: Order, now: float, reports: list[dict]) -> None:
        """Trigger a stop order whose trigger is crossed; schedule a fill when the order can fill."""
        lp = self._instruments[(order.exch, order.tsym)].lp
        if order.status == TRIGGER_PENDING and self._triggered(order, lp):
            order.status, order.triggered = OPEN, True
            reports.append(self._report(order, "New", now))
        if order.status == OPEN and order.due is None and (order.ret == "IOC" or self._fillable(order, lp)):
            self._schedule(order, now + self._delay)

    def _schedule(self, order: Order, due: float) -> None:
        order.due = due
        self._heap_seq += 1
        heapq.heappush(self._due, (due, self._heap_seq, order.norenordno))

    def next_due(self) -> float | None:
        """When `step` next has work (None: nothing scheduled)."""
        while self._due:
            due, _, number = self._due[0]
            order = self._orders[number]
            if order.due == due and order.status == OPEN:
                return due
            heapq.heappop(self._due)
        return None

    def step(self, now: float) -> list[dict]:
        """Perform every fill due at or before `now`."""
        reports: list[dict] = []
        while (due := self.next_due()) is not None and due <= now:
            _, _, number = heapq.heappop(self._due)
            order = self._orders[number]
            order.due = None
            try:
                self._fill(order, now, reports)
            except Exception:
                self._schedule(order, now + self._delay)  # no fill id could be reserved: try again later
                raise
        return reports

    def _fill(self, order: Order, now: float, reports: list[dict]) -> None:
        inst = self._instruments[(order.exch, order.tsym)]
        if not self._fillable(order, inst.lp):
            if order.ret == "IOC":
                self._finish_cancel(order, now, reports)
            return  # rests until the price crosses again
        flid = str(self._take("fill"))  # first: it may fail (reservation), before anything is changed
        qty = min(order.remaining, self.config.fill_slice_qty)
        price = inst.lp
        order.fillshares += qty
        order.fillvalue += qty * price
        if order.remaining == 0:
            order.status = COMPLETE
            order.filled_mono = self.mono()
            self._retire(order)
        fill = {"flid": flid, "fltm": exch_tm(now), "flqty": str(qty), "flprc": money(price)}
        report = self._report(order, "Fill", now, fill)
        reports.append(report)
        self.account(order.uid).trades.append(report)
        key = (order.exch, order.tsym, order.prd)
        positions = self.account(order.uid).positions
        if key not in positions:
            positions[key] = Position(order.exch, order.tsym, order.token, order.prd, order.ls, order.ti)
        positions[key].apply(qty if order.trantype == "B" else -qty, price)
        inst.v += qty
        self._changed[(inst.exch, inst.tsym)] = inst
        if order.remaining:
            self._schedule(order, now + self._delay)

    def _report(self, order: Order, rpt: str, now: float, fill: dict | None = None) -> dict:
        self.dirty = True
        order.updated = now
        report = order.row()
        report["rpt"] = rpt
        if fill:
            report.update(fill)
        order.history.append(report)
        return report

    # ---------------------------------------------------------------- books

    def order_book(self, uid: str) -> list[dict]:
        """Newest first."""
        return [order.row() for order in reversed(self.account(uid).orders.values())]

    def order_history(self, uid: str, norenordno: str) -> list[dict] | None:
        """SingleOrdHist: every state, newest first; None for an unknown order."""
        order = self.account(uid).orders.get(as_text(norenordno))
        return None if order is None else [dict(state) for state in reversed(order.history)]

    def trade_book(self, uid: str) -> list[dict]:
        """One row per fill, newest first."""
        return [dict(trade) for trade in reversed(self.account(uid).trades)]

    def position_book(self, uid: str) -> list[dict]:
        return [
            position.row(self._instruments[(position.exch, position.tsym)].lp)
            for position in self.account(uid).positions.values()
        ]

    def limits(self, uid: str) -> dict:
        rpnl = urmtom = margin = 0.0
        for position in self.account(uid).positions.values():
            lp = self._instruments[(position.exch, position.tsym)].lp
            rpnl += position.rpnl
            urmtom += position.urmtom(lp)
            margin += abs(position.netqty) * lp  # plain notional of open positions
        return {
            "stat": "Ok",
            "actid": uid,
            "prfname": "PAPER",
            "cash": money(self.account(uid).cash),
            "payin": "0.00",
            "payout": "0.00",
            "brkcollamt": "0.00",
            "marginused": money(margin),
            "rpnl": money(rpnl),
            "urmtom": money(urmtom),
        }

    def all_orders(self) -> list[dict]:
        """Every order of every account, oldest first, with fillshares/avgprc always present, plus the bench
        timestamps `arrived_mono` / `filled_mono` (time.monotonic(), None until they happen)."""
        rows = []
        for order in self._orders.values():
            row = order.row()
            row.setdefault("fillshares", "0")
            row.setdefault("avgprc", "0.00")
            row["arrived_mono"] = order.arrived_mono
            row["filled_mono"] = order.filled_mono
            rows.append(row)
        return rows


def om_message(report: dict) -> dict:
    """The WebSocket order-update push for one report."""
    message = {"t": "om"}
    message.update({key: value for key, value in report.items() if key not in ("stat", "rpt")})
    message["reporttype"] = report["rpt"]
    return message
