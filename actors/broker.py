"""BrokerActor: owns the only NorenOMS session (REST login + the WebSocket), steps 3-5 of the flow.

Step 3: CREATED -> SENT_TO_BROKER is committed (compare-and-set through StoreActor) before the request leaves;
only the winner sends, so an order is sent at most once. Step 4: PlaceOrder with remarks = command_id.
Step 5: Ok -> broker_order_id stored; Not_Ok -> FAILED BROKER_REJECTED:<emsg>; timeout or broken connection ->
unknown outcome: the order stays SENT_TO_BROKER and is never resent (the watcher resolves it).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from loguru import logger

from actors.base import SupervisedActor

from messages.commands import (
    BrokerOrderReport,
    CancelOrder,
    SendOrder,
    SetBrokerOrderId,
    TransitionOrder,
    TransitionResult,
)
from messages.noren import PlaceOrderRequest
from messages.orders import OrderSnapshot
from runtime.noren.errors import BrokerError, BrokerRejected, NotSent, SessionExpired, UnknownOutcome
from runtime.noren.rest import NorenRestClient
from storage.models import Order

SIDES = {"BUY": "B", "SELL": "S"}
PRODUCTS = {"NRML": "M", "MIS": "I", "CNC": "C"}
PRICE_TYPES = {"MARKET": "MKT", "LIMIT": "LMT", "SL": "SL-LMT", "SL-M": "SL-MKT"}


def to_place_request(order: OrderSnapshot) -> PlaceOrderRequest:
    market = order.order_type in ("MARKET", "SL-M")
    return PlaceOrderRequest(
        exch=order.exchange, tsym=order.symbol, qty=order.quantity,
        prc=0.0 if market else order.price,
        trgprc=order.trigger_price if order.order_type in ("SL", "SL-M") else None,
        prd=PRODUCTS[order.product], trantype=SIDES[order.side], prctyp=PRICE_TYPES[order.order_type],
        ret="DAY", remarks=order.command_id,
    )


@dataclass
class RateLimiter:
    """Sliding-window limits (per second and per minute). `delay()` says how long to wait before the next send."""

    per_second: float
    per_minute: float
    sent: deque = field(default_factory=deque)

    def delay(self, now: float) -> float:
        while self.sent and now - self.sent[0] >= 60.0:
            self.sent.popleft()
        waits = [0.0]
        if len(self.sent) >= self.per_minute:
            waits.append(60.0 - (now - self.sent[-int(self.per_minute)]))
        recent = [t for t in self.sent if now - t < 1.0]
        if len(recent) >= self.per_second:
            waits.append(1.0 - (now - recent[-int(self.per_second)]))
        return max(waits)

    def record(self, now: float) -> None:
        self.sent.append(now)


def broker_reason(emsg: str) -> str:
    return " ".join((emsg or "UNKNOWN").split())[:200]


class BrokerActor(SupervisedActor):
    registry_name = "broker"

    def __init__(self, registry, config, *, client: NorenRestClient, ws_url: str):
        super().__init__(registry)
        self.config = config
        self.ws_url = ws_url
        b = config.broker
        # The client (and its session credentials) outlives a restart of this actor, so the readers forked
        # from it by the watcher and risk see every re-login.
        self.client = client
        self.limiter = RateLimiter(b.orders_per_second, b.orders_per_minute)
        self.ws = None
        self.logged_in = False

    # ---- session --------------------------------------------------------------------------------

    def login(self) -> bool:
        b = self.config.broker
        try:
            if b.auth == "oauth":
                self.client.login_oauth(b.auth_code, b.oauth_client_id, b.api_secret)
            else:
                self.client.login_quickauth(b.user_id, b.password, b.totp_secret, b.vendor_code, b.api_secret,
                                            b.imei)
        except Exception as exc:  # noqa: BLE001 - any login failure is reported, never raised into the mailbox
            self.logged_in = False
            logger.error("broker login failed for {}: {}", b.user_id, exc)
            return False
        self.logged_in = True
        logger.info("broker session opened for {}", b.user_id)
        if self.ws is not None:
            self.ws.retry_now()  # re-authenticate the socket with the new token now, not after its backoff
        return True

    def on_start(self):
        self.logged_in = self.client.logged_in  # a restarted actor keeps the session it had
        if not self.logged_in:
            self.login()
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

        self.ws = NorenWebSocket(self.ws_url, lambda: self.client.session, auth=self.config.broker.auth,
                                 on_order=on_order, on_state=lambda s: registry.tell("watcher", f"ws:{s}"))
        self.ws.start()

    def on_stop(self):
        if self.ws is not None:
            self.ws.stop()

    # ---- messages -------------------------------------------------------------------------------

    def handle(self, message):
        if isinstance(message, SendOrder):
            self.send(message.order)
            return None
        if isinstance(message, CancelOrder):
            return self.cancel(message)
        if message == "reader":
            return self.client.fork()
        if message == "relogin":
            return self.login()
        if message == "logged_in":
            return self.logged_in
        return None

    def cancel(self, message: CancelOrder) -> bool:
        """Ask the broker to cancel one of our orders; the outcome comes back as a broker report."""
        row = Order.get_or_none(Order.command_id == message.command_id)
        if row is None or row.status not in ("SENT_TO_BROKER", "PARTIAL"):
            return False
        if not row.broker_order_id:
            logger.warning("cannot cancel {} yet: its PlaceOrder outcome is unknown ({})", row.command_id,
                           message.reason)
            return False
        for _ in range(2):
            if not self.logged_in and not self.login():
                break
            try:
                self.client.cancel_order(row.broker_order_id)
                logger.info("cancel requested for {} ({}): {}", row.command_id, row.broker_order_id, message.reason)
                self.registry.tell("watcher", "lookup")  # pick the cancellation up without waiting for a poll
                return True
            except SessionExpired:
                self.logged_in = False
            except BrokerError as exc:  # e.g. already complete: the broker's report settles it
                logger.warning("cancel of {} refused or failed: {}", row.command_id, exc)
                return False
        return False

    def _fail(self, order: OrderSnapshot, tag: str, detail: str | None = None) -> None:
        self.registry.tell("store", TransitionOrder(command_id=order.command_id, to_status="FAILED",
                                                    expect_from=("SENT_TO_BROKER",), tag=tag, detail=detail))

    def send(self, order: OrderSnapshot) -> None:
        wait = self.limiter.delay(time.monotonic())
        if wait > 0:
            time.sleep(wait)  # the broker's and SEBI's order-rate limits; only this actor waits
        try:
            claim: TransitionResult = self.registry.ask("store", TransitionOrder(
                command_id=order.command_id, to_status="SENT_TO_BROKER", expect_from=("CREATED",),
                detail="sending PlaceOrder"), timeout=10)
        except Exception as exc:  # noqa: BLE001 - no durable claim, no send (never "send anyway")
            logger.error("could not commit SENT_TO_BROKER for {} ({!r}); the order is NOT sent", order.command_id,
                         exc)
            self.registry.tell("store", TransitionOrder(
                command_id=order.command_id, to_status="FAILED", expect_from=("CREATED",),
                tag="SEND_FAILED:COMMIT_FAILED", detail=repr(exc)[:300]))
            return
        if not claim.applied:
            logger.warning("order {} not sent: {}", order.command_id, claim.reason)
            return
        request = to_place_request(claim.order or order)
        attempts = self.config.broker.max_send_attempts
        for attempt in range(1, attempts + 1):
            if not self.logged_in and not self.login():
                if attempt == attempts:
                    self._fail(order, "SEND_FAILED:NOT_LOGGED_IN", "no broker session; the order was not sent")
                    return
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
                    return
                time.sleep(min(0.2 * attempt, 1.0))
                continue
            except BrokerRejected as exc:
                reason = broker_reason(exc.emsg)
                self._fail(order, f"BROKER_REJECTED:{reason}")
                return
            except UnknownOutcome as exc:
                # Never resend: the order may exist at the broker. The watcher finds it by remarks.
                logger.warning("PlaceOrder {} outcome unknown ({}); the watcher will resolve it", order.command_id,
                               exc)
                self.registry.tell("watcher", "lookup")
                return
            self.registry.tell("store", SetBrokerOrderId(command_id=order.command_id, broker_order_id=norenordno))
            return
        self._fail(order, "SEND_FAILED:SESSION_EXPIRED", "could not re-establish the broker session")
