"""BrokerActor: owns the only NorenOMS session (REST login + the WebSocket), steps 3-5 of the flow.

Step 3: CREATED -> SENT_TO_BROKER is committed (compare-and-set through StoreActor) before the request leaves;
only the winner sends, so an order is sent at most once. Step 4: PlaceOrder with remarks = command_id.
Step 5: Ok -> broker_order_id stored; Not_Ok -> FAILED BROKER_REJECTED:<emsg>; timeout or broken connection ->
unknown outcome: the order stays SENT_TO_BROKER and is never resent (the watcher resolves it).

Market protection: the live broker refuses MKT and SL-MKT from API clients, so (with `broker.market_protection`)
a MARKET leg goes out as LMT at the last price +/- a band by instrument kind, and an SL-M leg as SL-LMT at its
trigger +/- the band, rounded to the tick (`protected_limit`). The last price comes from the WebSocket touchline
of the instrument (subscribed at its first MARKET order) while that can be trusted (`NorenWebSocket.touchline`),
else from a GetQuotes made for that very order; the instrument's token, tick and lot come from SearchScrip and
are cached for the trading day.
Whether the order can be priced is decided BEFORE the SENT_TO_BROKER claim: a leg without a price ends
`FAILED SEND_FAILED:NO_QUOTE` (or `NO_TICK_SIZE`) straight from CREATED, and nothing reaches the broker.
The order row keeps the intent (MARKET, price 0); the price actually sent is in the SENT_TO_BROKER event detail.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import TYPE_CHECKING

from loguru import logger

from actors.base import SupervisedActor
from actors.broker_session import SessionGate
from actors.instruments import (
    freeze_table,
    instrument_kind,
)

from messages.commands import (
    BrokerOrderReport,
    CancelOrder,
    InstrumentInfo,
    InstrumentQuery,
    Notify,
    SendLegs,
    SetBrokerOrderId,
    TransitionOrder,
    TransitionResult,
)
from messages.commands import BrokerOrderNotFound  # cancel: `Order not found` (BROKER_UNKNOWN_ORDER)
from messages.broker import (
    GetFreezeTable,
    GetReader,
    GetSession,
    IsLoggedIn,
    IsWsConnected,
    Relogin,
    ReloginDue,
)
from messages.noren import PlaceOrderRequest
from messages.orders import OrderSnapshot
from messages.watcher import LookUp, WsStateChanged
from runtime.noren.errors import (
    BrokerError,
    BrokerRejected,
    CredentialsRejected,
    LoginFailed,
    NotSent,
    SessionExpired,
    UnknownOutcome,
)
from runtime.noren.errors import says_order_unknown  # cancel: `Order not found` (BROKER_UNKNOWN_ORDER)
from runtime.noren.rest import NorenRestClient
from storage import queries

if TYPE_CHECKING:
    from runtime.noren.ws import Touch

SIDES = {"BUY": "B", "SELL": "S"}
PRODUCTS = {"NRML": "M", "MIS": "I", "CNC": "C"}
PRICE_TYPES = {"MARKET": "MKT", "LIMIT": "LMT", "SL": "SL-LMT", "SL-M": "SL-MKT"}


def to_place_request(order: OrderSnapshot, limit: float | None = None) -> PlaceOrderRequest:
    """The PlaceOrder request of a leg. `limit`: the market-protection price of a MARKET / SL-M leg, which then
    goes out as LMT / SL-LMT at that price (None: MKT / SL-MKT as the intent says)."""
    market = order.order_type in ("MARKET", "SL-M")
    protected = market and limit is not None
    prctyp = PRICE_TYPES[order.order_type]
    if protected:
        prctyp = "LMT" if order.order_type == "MARKET" else "SL-LMT"
    return PlaceOrderRequest(
        exch=order.exchange, tsym=order.symbol, qty=order.quantity,
        prc=limit if protected else (0.0 if market else order.price),
        trgprc=order.trigger_price if order.order_type in ("SL", "SL-M") else None,
        prd=PRODUCTS[order.product], trantype=SIDES[order.side], prctyp=prctyp,
        ret="DAY", remarks=order.command_id,
    )


# ---- tick rounding and protected limits (pure) ---------------------------------------------------

IST = timezone(timedelta(hours=5, minutes=30))


def _dec(value: float | Decimal) -> Decimal:
    # Decimal arithmetic on the shortest repr: 201.35 / 0.05 is exactly 4027, not 4026.999999999999.
    return value if isinstance(value, Decimal) else Decimal(repr(float(value)))


def round_to_tick(price: float | Decimal, tick: float, side: str) -> float:
    """BUY rounds up to the tick, SELL down; never below one tick."""
    if tick <= 0:
        raise ValueError(f"tick size must be positive, not {tick!r}")
    step = _dec(tick)
    # Rounded to 6 places first: float dust in the input (0.1 + 0.2 = 0.30000000000000004) is not a tick more.
    # Real prices have at most 4 decimals and ticks are >= 0.0025, so no genuine fraction is that small.
    ticks = round(_dec(price) / step, 6)
    n = math.ceil(ticks) if side == "BUY" else math.floor(ticks)
    return float(max(n, 1) * step)


def _band(reference: float, band_pct: float, side: str) -> Decimal:
    band = _dec(band_pct) / 100
    return _dec(reference) * (1 + band) if side == "BUY" else _dec(reference) * (1 - band)


def protected_limit(side: str, last_price: float, tick: float, band_pct: float, *,
                    upper: float | None = None, lower: float | None = None) -> float:
    """The limit price that stands in for a market order: BUY last * (1 + band%) rounded up to the tick,
    SELL last * (1 - band%) rounded down, never below one tick. `upper` / `lower` (the circuit limits uc / lc
    of GetQuotes) cap it when given, so the exchange does not refuse the price outright."""
    if last_price <= 0:
        raise ValueError(f"last price must be positive, not {last_price!r}")
    limit = round_to_tick(_band(last_price, band_pct, side), tick, side)
    if side == "BUY" and upper and upper >= last_price:
        limit = min(limit, round_to_tick(upper, tick, "SELL"))
    if side != "BUY" and lower and lower <= last_price:
        limit = max(limit, round_to_tick(lower, tick, "BUY"))
    return limit


def trading_day(now: float) -> str:
    return datetime.fromtimestamp(now, IST).strftime("%Y-%m-%d")


@dataclass
class Instrument:
    """What SearchScrip / GetQuotes told us about one instrument (cached for the trading day)."""

    token: str
    tick: float | None = None
    lot: int | None = None
    # The circuit limits of the last GetQuotes: the documented touchline does not carry them.
    upper: float | None = None
    lower: float | None = None
    touchline: bool = False  # its touchline is subscribed


class NoSession(NotSent):
    """No broker session for a read (the login was refused, or failed): nothing was asked of the broker."""


class NoPrice(Exception):
    """A MARKET / SL-M leg cannot be priced for market protection: it must not go out."""

    def __init__(self, tag: str, detail: str):
        super().__init__(detail)
        self.tag = tag
        self.detail = detail


@dataclass(frozen=True)
class Protection:
    """How a MARKET / SL-M leg is priced: the band and the facts it was computed from."""

    kind: str
    band_pct: float
    tick: float
    last_price: float | None = None
    upper: float | None = None
    lower: float | None = None
    source: str = "GetQuotes"  # where the last price came from: GetQuotes | touchline

    def limit(self, order: OrderSnapshot) -> float:
        if order.order_type == "SL-M":
            return round_to_tick(_band(order.trigger_price, self.band_pct, order.side), self.tick, order.side)
        return protected_limit(order.side, self.last_price, self.tick, self.band_pct, upper=self.upper,
                               lower=self.lower)

    def describe(self, order: OrderSnapshot, limit: float) -> str:
        pct = f"{self.band_pct:g}%"
        if order.order_type == "SL-M":
            return (f"SL-LMT {_price(limit)} trigger {_price(order.trigger_price)} (SL-M protected {pct} "
                    f"{self.kind}, tick {self.tick:g})")
        source = "" if self.source == "GetQuotes" else f" from {self.source}"
        return (f"LMT {_price(limit)} (MARKET protected {pct} {self.kind}, last {_price(self.last_price)}{source}, "
                f"tick {self.tick:g})")


def _price(value: float | None) -> str:
    """201.4 -> "201.40", 82.0025 -> "82.0025"."""
    if value is None:
        return "?"
    text = f"{value:.4f}".rstrip("0")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"


def _window(limit: float) -> deque:
    # Only the last ceil(limit) sends of a window can decide a wait. Below 1, int(limit) is 0 and the wait is
    # measured from the oldest send of the window, so all are kept.
    return deque(maxlen=math.ceil(limit) if 1 <= limit < 1e6 else None)


@dataclass
class RateLimiter:
    """Sliding-window limits (per second and per minute). `delay()` says how long to wait before the next send.

    One deque per window, trimmed from the left as sends age out (send times only grow): O(1) amortised per
    send, where one scan of the minute's sends cost 0.75 ms at 500 sends/s."""

    per_second: float
    per_minute: float
    sent: deque | None = None  # send times of the last minute (at most ceil(per_minute) of them)
    recent: deque | None = None  # send times of the last second (at most ceil(per_second))

    def __post_init__(self) -> None:
        if self.sent is None:
            self.sent = _window(self.per_minute)
        if self.recent is None:
            self.recent = _window(self.per_second)

    def delay(self, now: float) -> float:
        sent, recent = self.sent, self.recent
        while sent and now - sent[0] >= 60.0:
            sent.popleft()
        while recent and now - recent[0] >= 1.0:
            recent.popleft()
        wait = 0.0
        if len(sent) >= self.per_minute:
            wait = 60.0 - (now - sent[-int(self.per_minute)])
        if len(recent) >= self.per_second:
            wait = max(wait, 1.0 - (now - recent[-int(self.per_second)]))
        return wait

    def record(self, now: float) -> None:
        self.sent.append(now)
        self.recent.append(now)


def touchline_protection(order: OrderSnapshot, touch: Touch, inst: Instrument, kind: str,
                         band: float) -> Protection | None:
    """How a MARKET leg is priced from a trusted touchline, or None when GetQuotes must decide.

    The documented touchline has no circuit limits, so those of today's last GetQuotes stand in while they do
    not decide the price. A limit the band would reach may have been relaxed since (they are widened during the
    day, not tightened), and then GetQuotes gives the current one."""
    if not touch.lp or touch.lp <= 0:
        return None
    tick = touch.ti if touch.ti and touch.ti > 0 else inst.tick
    if not tick:
        return None
    buy = order.side == "BUY"
    live = touch.uc if buy else touch.lc
    if live is not None and live > 0:
        return Protection(kind=kind, band_pct=band, tick=tick, last_price=touch.lp, upper=touch.uc,
                          lower=touch.lc, source="touchline")
    cached = inst.upper if buy else inst.lower
    if cached is None:
        return None
    uncapped = protected_limit(order.side, touch.lp, tick, band)
    if (uncapped >= cached) if buy else (uncapped <= cached):
        return None
    return Protection(kind=kind, band_pct=band, tick=tick, last_price=touch.lp, source="touchline")


def _no_price_tag(order: OrderSnapshot) -> str:
    return "SEND_FAILED:NO_TICK_SIZE" if order.order_type == "SL-M" else "SEND_FAILED:NO_QUOTE"


def broker_reason(emsg: str) -> str:
    return " ".join((emsg or "UNKNOWN").split())[:200]


class BrokerActor(SupervisedActor):
    registry_name = "broker"
    HANDLERS = {
        SendLegs: "send_legs",
        CancelOrder: "cancel",
        InstrumentQuery: "instrument_info",
        GetFreezeTable: "_on_freeze_table",
        GetReader: "_on_reader",
        Relogin: "_on_relogin",
        ReloginDue: "_on_relogin_due",
        GetSession: "_on_session",
        IsLoggedIn: "_on_logged_in",
        IsWsConnected: "_on_ws_connected",
    }

    def __init__(self, registry, config, *, client: NorenRestClient, ws_url: str, gate: SessionGate | None = None,
                 startup: bool = False):
        super().__init__(registry)
        # The service's first broker: a credential refused at its first login stops the start (System), so it
        # schedules no retry and sends no notification for it.
        self.startup = startup
        self.config = config
        self.ws_url = ws_url
        b = config.broker
        # The client (and its session credentials) outlives a restart of this actor, so the readers forked
        # from it by the watcher and risk see every re-login. So does the gate: a restart must not reset the
        # count of refused logins (the broker locks the account after a few).
        self.client = client
        self.gate = gate if gate is not None else SessionGate(websocket=b.use_websocket)
        self.limiter = RateLimiter(b.orders_per_second, b.orders_per_minute)
        self.ws = None
        self._logged_in = False
        self._retry: threading.Timer | None = None
        # (exch, tsym) -> Instrument from SearchScrip; lot sizes change with the series, so per trading day.
        self.instruments: dict[tuple[str, str], Instrument] = {}
        self.instruments_day: str | None = None
        self.freeze = freeze_table(b.freeze_qty)

    # ---- session --------------------------------------------------------------------------------

    @property
    def logged_in(self) -> bool:
        return self._logged_in

    @logged_in.setter
    def logged_in(self, value: bool) -> None:
        self._logged_in = value
        if not value:
            self.gate.lost()  # /health: no longer logged in (unless a refusal already says more)

    def login(self) -> bool:
        """Open a session. Never while a refused login is backing off (the gate): then False at once, and the
        scheduled retry logs in. A refusal (the broker's Not_Ok) is told apart from a network failure."""
        b = self.config.broker
        if not self.gate.may_login():
            return False
        self.gate.attempting()
        try:
            if b.auth == "oauth":
                self.client.login_oauth(b.auth_code, b.oauth_client_id, b.api_secret)
            else:
                self.client.login_quickauth(b.user_id, b.password, b.totp_secret, b.vendor_code, b.api_secret,
                                            b.imei)
        except LoginFailed as exc:
            self._refused(exc.emsg or exc.message, credentials=isinstance(exc, CredentialsRejected))
            return False
        except ValueError as exc:  # a credential that cannot even be used (an unusable TOTP seed): a config mistake
            self._refused(str(exc), credentials=True)
            return False
        except Exception as exc:  # noqa: BLE001 - any login failure is reported, never raised into the mailbox
            self._logged_in = False
            self.gate.failed(self._public(str(exc)))
            logger.error("broker login failed for {}: {}", b.user_id, exc)
            return False
        self._logged_in = True
        logger.info("broker session opened for {}", b.user_id)
        if self.gate.succeeded():
            self._cancel_retry()
            self.registry.tell("notifier", Notify(kind="broker", text=f"Broker login for {b.user_id} works again: "
                                                                      "orders are sent."))
        if self.ws is not None:
            self.ws.retry_now()  # re-authenticate the socket with the new token now, not after its backoff
        return True

    def _public(self, text: str) -> str:
        """Text for /health (which answers without credentials): no user id, short."""
        user = self.config.broker.user_id
        text = " ".join((text or "").split())
        return (text.replace(user, "<user>") if user else text)[:200]

    def _refused(self, emsg: str, *, credentials: bool) -> None:
        """The broker refused the login: no session until a scheduled retry works (at most the gate's few in its
        window). The old token is dead (we only log in again after it expired): the readers must not use it."""
        b = self.config.broker
        self._logged_in = False
        self.client.clear_session()
        reason = self._public(emsg)
        first = self.gate.refused_login(reason, credentials=credentials)
        if self.startup and credentials:
            logger.error("broker login refused for {}: {}", b.user_id, reason)
            return
        wait = self.gate.wait_s()
        logger.error("broker login refused for {}: {} (next try in {:.0f} s; at most {} logins in {:.0f} min)",
                     b.user_id, reason, wait, self.gate.max_attempts, self.gate.window_s / 60)
        if first:
            self.registry.tell("notifier", Notify(kind="broker", text=(
                f"Broker login refused for {b.user_id}: {reason}. No order can be sent (they fail "
                f"SEND_FAILED:NOT_LOGGED_IN) until a login works; next try in {wait:.0f} s, at most "
                f"{self.gate.max_attempts} in {self.gate.window_s / 60:.0f} min (the broker locks the account "
                "after repeated wrong attempts). Check the [broker] credentials.")))
        self._schedule_retry(wait)

    def _schedule_retry(self, delay: float) -> None:
        self._cancel_retry()
        registry = self.registry
        self._retry = threading.Timer(delay, lambda: registry.tell("broker", ReloginDue()))
        self._retry.daemon = True
        self._retry.start()

    def _cancel_retry(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None

    def _session(self) -> bool:
        """A session for the order path: logs in when needed, but never while the broker refuses our login
        (orders must not hammer a refusing broker; the scheduled retry logs in)."""
        if self.logged_in:
            return True
        if self.gate.refused:
            return False
        return self.login()

    def on_start(self):
        self._logged_in = self.client.logged_in  # a restarted actor keeps the session it had
        if not self.logged_in:
            if self.gate.refused:  # restarted while refused: keep to the schedule
                self._schedule_retry(self.gate.wait_s())
            else:
                self.login()
        self.startup = False
        if self.config.broker.use_websocket:
            self._start_websocket()

    def _start_websocket(self):
        from runtime.noren.ws import NorenWebSocket

        registry = self.registry

        def on_order(update):
            registry.tell("watcher", BrokerOrderReport(
                remarks=update.remarks, broker_order_id=update.norenordno, status=update.status or "",
                filled_qty=int(update.fillshares or 0), avg_price=update.avgprc, reason=update.rejreason,
                exchange=update.exch, symbol=update.tsym, quantity=int(update.qty or 0),
                side={"B": "BUY", "S": "SELL"}.get(update.trantype or "", update.trantype), origin="ws"))

        gate = self.gate

        def on_state(state: str) -> None:
            gate.set_websocket(state)  # for /health
            registry.tell("watcher", WsStateChanged(state=state))

        self.ws = NorenWebSocket(self.ws_url, lambda: self.client.session, auth=self.config.broker.auth,
                                 on_order=on_order, on_state=on_state)
        self.ws.start()

    def on_stop(self):
        self._cancel_retry()
        if self.ws is not None:
            self.ws.stop()

    # ---- messages -------------------------------------------------------------------------------

    def _on_freeze_table(self, message: GetFreezeTable) -> dict[str, int]:
        return dict(self.freeze)

    def _on_reader(self, message: GetReader) -> NorenRestClient:
        return self.client.fork()

    def _on_relogin(self, message: Relogin) -> bool:  # a reader saw Session Expired
        self.logged_in = False
        return self.login()

    def _on_relogin_due(self, message: ReloginDue) -> bool:  # the scheduled retry after a refused login
        return self.logged_in or self.login()

    def _on_session(self, message: GetSession) -> dict:
        return self.gate.snapshot()

    def _on_logged_in(self, message: IsLoggedIn) -> bool:
        return self.logged_in

    def _on_ws_connected(self, message: IsWsConnected) -> bool:  # a restarted watcher missed the socket's state
        return self.ws is not None and self.ws.connected.is_set()

    def cancel(self, message: CancelOrder) -> bool:
        """Ask the broker to cancel one of our orders; the outcome comes back as a broker report."""
        row = queries.order_row(message.command_id)
        if row is None or row["status"] not in ("SENT_TO_BROKER", "PARTIAL"):
            return False
        if not row["broker_order_id"]:
            logger.warning("cannot cancel {} yet: its PlaceOrder outcome is unknown ({})", row["command_id"],
                           message.reason)
            return False
        for _ in range(2):
            if not self.logged_in and not self.login():
                break
            try:
                self.client.cancel_order(row["broker_order_id"])
                logger.info("cancel requested for {} ({}): {}", row["command_id"], row["broker_order_id"],
                            message.reason)
                self.registry.tell("watcher", LookUp())  # pick the cancellation up without waiting for a poll
                return True
            except SessionExpired:
                self.logged_in = False
            except BrokerError as exc:  # e.g. already complete: the broker's report settles it
                logger.warning("cancel of {} refused or failed: {}", row["command_id"], exc)
                if says_order_unknown(exc):
                    # Filled or cancelled meanwhile, or forgotten by the broker: the watcher checks the books
                    # before it concludes anything (BROKER_UNKNOWN_ORDER).
                    self.registry.tell("watcher", BrokerOrderNotFound(
                        command_id=row["command_id"], broker_order_id=row["broker_order_id"], route="CancelOrder",
                        emsg=broker_reason(exc.emsg)))
                return False
        return False

    # ---- instruments and quotes (market protection, lot sizes for the guard's freeze split) ------------

    def _read(self, what: str, call):
        """A broker read (SearchScrip, GetQuotes): re-login on Session Expired, retry a failed read within
        `max_send_attempts` (a read is safe to repeat). Raises the last BrokerError."""
        attempts = self.config.broker.max_send_attempts
        for attempt in range(1, attempts + 1):
            if not self._session():
                if self.gate.refused or attempt == attempts:
                    raise NoSession(f"{what}: no broker session")
                time.sleep(min(0.2 * attempt, 1.0))
                continue
            try:
                return call()
            except SessionExpired:
                self.logged_in = False
                if attempt == attempts:
                    raise NoSession(f"{what}: no broker session (Session Expired)") from None
            except BrokerRejected:
                raise  # the broker's answer; asking again gives the same
            except BrokerError as exc:
                logger.warning("{} failed (attempt {}/{}): {}", what, attempt, attempts, exc)
                if attempt == attempts:
                    raise
                time.sleep(min(0.1 * attempt, 0.5))
        raise NotSent(f"{what}: no attempt left")

    def instrument(self, exch: str, tsym: str) -> Instrument | None:
        """Token, tick and lot of an instrument: SearchScrip (exact tsym) once per trading day, then cached.
        None when the broker does not know the symbol (not cached: asked again next time)."""
        day = trading_day(time.time())
        if self.instruments_day != day:
            stale = [f"{exch}|{inst.token}" for (exch, _), inst in self.instruments.items() if inst.touchline]
            if stale and self.ws is not None:
                self.ws.unsubscribe_touchline(stale)  # subscribed again at their next use
            self.instruments, self.instruments_day = {}, day
        key = (exch, tsym)
        found = self.instruments.get(key)
        if found is not None:
            return found
        rows = self._read(f"SearchScrip {exch} {tsym}", lambda: self.client.search_scrip(exch, tsym))
        exact = [r for r in rows if (r.tsym or "").strip().upper() == tsym.strip().upper() and r.token]
        if not exact:
            logger.warning("SearchScrip {} {}: no instrument with exactly this symbol ({} results)", exch, tsym,
                           len(rows))
            return None
        row = exact[0]
        found = Instrument(token=str(row.token), tick=row.ti if row.ti and row.ti > 0 else None,
                           lot=row.ls if row.ls and row.ls > 0 else None)
        self.instruments[key] = found
        return found

    def instrument_info(self, query: InstrumentQuery) -> InstrumentInfo:
        kind = instrument_kind(query.exchange, query.symbol)
        try:
            found = self.instrument(query.exchange, query.symbol)
        except Exception as exc:  # noqa: BLE001 - an unknown lot is the asker's fallback, never a crash here
            logger.warning("instrument look-up {} {} failed: {}", query.exchange, query.symbol, exc)
            found = None
        if found is None:
            return InstrumentInfo(exchange=query.exchange, symbol=query.symbol, kind=kind, found=False)
        return InstrumentInfo(exchange=query.exchange, symbol=query.symbol, kind=kind, found=True,
                              token=found.token, lot_size=found.lot, tick_size=found.tick)

    def protection(self, order: OrderSnapshot) -> Protection | None:
        """How to price a MARKET / SL-M leg under market protection (None: it goes out as it is).

        MARKET needs a current last price (a quote even a few seconds old can put the limit on the wrong side
        of a fast market): the instrument's touchline when it can be trusted (`live_protection`), else a
        GetQuotes made now, for this order. SL-M needs only the tick. Raises NoPrice when either is missing."""
        b = self.config.broker
        if not b.market_protection or order.order_type not in ("MARKET", "SL-M"):
            return None
        kind = instrument_kind(order.exchange, order.symbol)
        band = b.market_protection_pct[kind]
        try:
            inst = self.instrument(order.exchange, order.symbol)
        except NoSession as exc:
            raise NoPrice("SEND_FAILED:NOT_LOGGED_IN", str(exc)) from None
        except BrokerError as exc:
            raise NoPrice(_no_price_tag(order), f"SearchScrip {order.exchange} {order.symbol} failed: {exc}") from None
        if inst is None:
            raise NoPrice(_no_price_tag(order), f"the broker knows no instrument {order.exchange} {order.symbol}")
        if order.order_type == "SL-M" and inst.tick:
            return Protection(kind=kind, band_pct=band, tick=inst.tick)
        if order.order_type == "MARKET" and (live := self.live_protection(order, inst, kind, band)) is not None:
            return live
        try:
            quote = self._read(f"GetQuotes {order.exchange} {order.symbol}",
                               lambda: self.client.get_quotes(order.exchange, inst.token))
        except NoSession as exc:
            raise NoPrice("SEND_FAILED:NOT_LOGGED_IN", str(exc)) from None
        except BrokerError as exc:
            raise NoPrice(_no_price_tag(order), f"GetQuotes {order.exchange} {order.symbol} failed: {exc}") from None
        tick = quote.ti if quote.ti and quote.ti > 0 else inst.tick
        if quote.ls and quote.ls > 0:
            inst.lot = quote.ls
        if not tick:
            raise NoPrice("SEND_FAILED:NO_TICK_SIZE", f"no tick size for {order.exchange} {order.symbol}")
        inst.tick = tick
        inst.upper = quote.uc if quote.uc and quote.uc > 0 else None
        inst.lower = quote.lc if quote.lc and quote.lc > 0 else None
        if order.order_type == "SL-M":
            return Protection(kind=kind, band_pct=band, tick=tick)
        if not quote.lp or quote.lp <= 0:
            raise NoPrice("SEND_FAILED:NO_QUOTE", f"GetQuotes {order.exchange} {order.symbol} has no last price")
        return Protection(kind=kind, band_pct=band, tick=tick, last_price=quote.lp, upper=quote.uc,
                          lower=quote.lc)

    def live_protection(self, order: OrderSnapshot, inst: Instrument, kind: str, band: float) -> Protection | None:
        """A MARKET leg priced from the instrument's WebSocket touchline, or None: ask GetQuotes. The first use
        subscribes the touchline (its tk cannot be here yet); only trusted values count (`NorenWebSocket.touchline`)."""
        if self.ws is None:
            return None
        key = f"{order.exchange}|{inst.token}"
        if not inst.touchline:
            self.ws.subscribe_touchline([key])
            inst.touchline = True
            return None
        touch = self.ws.touchline(key)
        if touch is None:
            return None
        if touch.ls and touch.ls > 0:
            inst.lot = touch.ls
        return touchline_protection(order, touch, inst, kind, band)

    def _fail(self, order: OrderSnapshot, tag: str, detail: str | None = None) -> None:
        self.registry.tell("store", TransitionOrder(command_id=order.command_id, to_status="FAILED",
                                                    expect_from=("SENT_TO_BROKER",), tag=tag, detail=detail))

    def send_legs(self, message: SendLegs) -> None:
        """Send the legs in the order given. `together` (the ENTRY legs of a spread): every leg is priced and its
        request built before any is claimed, BUY legs go first, and once one leg fails before reaching the broker
        the legs not yet sent are held (FAILED `SEND_FAILED:OTHER_LEG_BLOCKED`)."""
        orders = list(message.orders)
        if self.gate.refused and not self.logged_in:
            # Known refused: fail fast, before any pricing (no SearchScrip/GetQuotes without a session).
            self._not_logged_in(orders)
            return
        if message.together:
            orders.sort(key=lambda o: o.side != "BUY")  # stable: the guard's order within each side
        if not message.together:
            for order in orders:
                prepared = self.prepare(order)
                if prepared is not None:
                    self.place(order, *prepared)
            return
        # A leg no longer CREATED was claimed already (SendLegs re-delivered to a restarted broker): it is not a
        # failure of the spread; only the legs still CREATED go on.
        orders = [o for o in orders if queries.order_status(o.command_id) in (None, "CREATED")]
        ready = []
        for order in orders:
            prepared = self.prepare(order)
            if prepared is None:
                self._hold_back([o for o in orders if o.command_id != order.command_id], order, "could not be priced")
                return
            ready.append((order, prepared))
        for index, (order, prepared) in enumerate(ready):
            if not self.place(order, *prepared):
                self._hold_back([o for o, _ in ready[index + 1:]], order, "failed before reaching the broker")
                return

    def _not_logged_in(self, orders: list[OrderSnapshot]) -> None:
        reason = self.gate.reason or "no broker session"
        for order in orders:
            logger.error("order {} not sent: {}", order.command_id, reason)
            self.registry.tell("store", TransitionOrder(
                command_id=order.command_id, to_status="FAILED", expect_from=("CREATED",),
                tag="SEND_FAILED:NOT_LOGGED_IN", detail=f"{reason}; the order was not sent"[:300]))

    def _hold_back(self, orders: list[OrderSnapshot], culprit: OrderSnapshot, why: str) -> None:
        for order in orders:
            logger.warning("order {} not sent: leg {} of the same spread {}", order.command_id, culprit.command_id,
                           why)
            self.registry.tell("store", TransitionOrder(
                command_id=order.command_id, to_status="FAILED", expect_from=("CREATED",),
                tag="SEND_FAILED:OTHER_LEG_BLOCKED", detail=f"leg {culprit.command_id} {why}"))

    def prepare(self, order: OrderSnapshot) -> tuple[PlaceOrderRequest, str] | None:
        """Price the leg (market protection) and build its PlaceOrder, before any claim. None: the leg is not
        sendable and has been failed from CREATED (nothing at the broker, nothing ambiguous)."""
        status = queries.order_status(order.command_id)  # a cheap early look; the claim's compare-and-set decides
        if status is not None and status != "CREATED":
            logger.warning("order {} not sent: it is {} already", order.command_id, status)
            return None  # a repeated SendLegs: no look-ups for an order the claim would refuse anyway
        detail = "sending PlaceOrder"
        limit = None
        try:
            protection = self.protection(order)
            if protection is not None:
                limit = protection.limit(order)
                detail = f"sending PlaceOrder {protection.describe(order, limit)}"
        except Exception as exc:  # noqa: BLE001 - NoPrice, or anything unexpected: the order is not sent
            tag = exc.tag if isinstance(exc, NoPrice) else _no_price_tag(order)
            reason = exc.detail if isinstance(exc, NoPrice) else f"pricing failed: {exc!r}"
            logger.error("order {} ({} {} {}) not sent: {} [{}]", order.command_id, order.order_type, order.side,
                         order.symbol, reason, tag)
            where = "" if tag == "SEND_FAILED:NOT_LOGGED_IN" else "market protection: "
            self.registry.tell("store", TransitionOrder(
                command_id=order.command_id, to_status="FAILED", expect_from=("CREATED",), tag=tag,
                detail=f"{where}{reason}"[:300]))
            return None
        try:  # build the request before the claim: a leg we cannot express is FAILED, never "maybe sent"
            return to_place_request(order, limit), detail
        except Exception as exc:  # noqa: BLE001
            logger.error("order {} cannot be expressed as a PlaceOrder: {!r}", order.command_id, exc)
            self.registry.tell("store", TransitionOrder(
                command_id=order.command_id, to_status="FAILED", expect_from=("CREATED",),
                tag="SEND_FAILED:INVALID_REQUEST", detail=repr(exc)[:300]))
            return None

    def place(self, order: OrderSnapshot, request: PlaceOrderRequest, detail: str) -> bool:
        """Claim the order (CREATED -> SENT_TO_BROKER) and send it. True when it reached the broker or may have
        (an unknown outcome counts: it may exist there); False when it certainly did not."""
        wait = self.limiter.delay(time.monotonic())
        if wait > 0:
            time.sleep(wait)  # the broker's and SEBI's order-rate limits; only this actor waits
        try:
            claim: TransitionResult = self.registry.ask("store", TransitionOrder(
                command_id=order.command_id, to_status="SENT_TO_BROKER", expect_from=("CREATED",),
                detail=detail), timeout=10)
        except Exception as exc:  # noqa: BLE001 - no durable claim, no send (never "send anyway")
            logger.error("could not commit SENT_TO_BROKER for {} ({!r}); the order is NOT sent", order.command_id,
                         exc)
            self.registry.tell("store", TransitionOrder(
                command_id=order.command_id, to_status="FAILED", expect_from=("CREATED",),
                tag="SEND_FAILED:COMMIT_FAILED", detail=repr(exc)[:300]))
            return False
        if not claim.applied:
            logger.warning("order {} not sent: {}", order.command_id, claim.reason)
            return False
        attempts = self.config.broker.max_send_attempts
        for attempt in range(1, attempts + 1):
            if not self._session():
                if self.gate.refused or attempt == attempts:
                    why = self.gate.reason if self.gate.refused else "no broker session"
                    self._fail(order, "SEND_FAILED:NOT_LOGGED_IN", f"{why}; the order was not sent"[:300])
                    return False
                time.sleep(min(0.2 * attempt, 1.0))
                continue
            self.limiter.record(time.monotonic())
            try:
                norenordno = self.client.place_order(request)
            except SessionExpired:
                logger.warning("session expired while placing {}; logging in again", order.command_id)
                self.logged_in = False
                continue
            except NotSent as exc:
                logger.warning("PlaceOrder {} not sent (attempt {}/{}): {}", order.command_id, attempt, attempts, exc)
                if attempt == attempts:
                    self._fail(order, "SEND_FAILED:BROKER_UNREACHABLE", str(exc)[:300])
                    return False
                time.sleep(min(0.2 * attempt, 1.0))
                continue
            except BrokerRejected as exc:
                reason = broker_reason(exc.emsg)
                self._fail(order, f"BROKER_REJECTED:{reason}")
                return False
            except UnknownOutcome as exc:
                # Never resend: the order may exist at the broker. The watcher finds it by remarks.
                logger.warning("PlaceOrder {} outcome unknown ({}); the watcher will resolve it", order.command_id,
                               exc)
                self.registry.tell("watcher", LookUp())
                return True
            self.registry.tell("store", SetBrokerOrderId(command_id=order.command_id, broker_order_id=norenordno))
            return True
        self._fail(order, "SEND_FAILED:SESSION_EXPIRED", "could not re-establish the broker session")
        return False
