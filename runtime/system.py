"""The one place that starts and stops everything, and the in-process API tests drive it through.

Start (START_ORDER): the listeners are bound first (a busy port fails the start at once, before any broker
session), answering 503 until recovery has finished; then database, paper exchange (embedded mode), StoreActor,
NotifierActor, BrokerActor, WatcherActor, GuardActor, RiskActor, start-up recovery, and only then do the
listeners accept alerts. Stop: the listeners refuse alerts first (they stay bound, answering 503), in-flight
orders drain, then every actor stops in exactly the reverse of the start order (STOP_ORDER: the listeners
last), then the paper exchange and the database. If the listener ever stops on its own, `fatal` is set (and
it is logged and notified): `oms run` then stops the service and exits non-zero so that a process supervisor
restarts it.

This is the only module of runtime/ that imports actors/ (tests/test_layers.py): the `oms` command reaches the
few actor helpers it needs (hash_password, failure_kind, dashboard_reads, ListenerBindError) through here.
"""

from __future__ import annotations

import io
import json
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import pykka
from loguru import logger

from actors.access import hash_password  # noqa: F401 - for `oms operator hash-password`
from actors.broker import BrokerActor
from actors.broker_session import SessionGate
from actors.dashboard import reads as dashboard_reads  # noqa: F401 - for `oms positions` without a service
from actors.guard import GuardActor
from actors.ingress import (  # noqa: F401 - ListenerBindError: for `oms run`
    OPERATOR,
    WEBHOOK,
    IngressActor,
    IngressApp,
    ListenerBindError,
    OperatorIngressActor,
    create_listener,
)
from actors.notifier import NotifierActor, failure_kind  # noqa: F401 - failure_kind: for `oms tail`, `oms exit`
from actors.risk import RiskActor
from actors.risk_rules import trading_day
from actors.store import StoreActor
from actors.watcher import WatcherActor
from messages.broker import GetSession
from messages.commands import AnnounceLegs, Notify, TransitionOrder
from messages.control import Accept, GetNotifierStats, GetPort, Refuse
from messages.store import Sync
from messages.watcher import GetWatcherStatus, PollNow
from messages.orders import OrderSnapshot
from runtime.config import Config
from runtime.logs import add_stderr_sink, remove_logging, setup_logging
from runtime.noren.rest import NorenRestClient
from runtime.operator_token import operator_token
from runtime.registry import Registry
from runtime.supervisor import Supervisor
from storage import queries
from storage import transitions as T
from storage.db import close_database, open_database

LIVE_REST_URL = "https://api.shoonya.com/NorenWClientTP/"
LIVE_WS_URL = "wss://api.shoonya.com/NorenWSTP/"
SUBSCRIBERS = ("guard", "notifier")
# Start-up: how long recovery waits for the WebSocket before reading the OrderBook. A book read made after the
# connection covers it (the watcher need not read the whole book a second time); a socket that is slower than
# this costs one more read when it connects, never a gap.
WS_WAIT_AT_START_S = 2.0
# Start-up reconciliation: the OrderBook read and what it forwards (the read itself is bounded by the REST
# client's request_timeout_s; a large day's book can take a while to parse).
RECOVER_TIMEOUT_S = 60.0
# Start-up: how long the first broker login may take before the start is judged (connect + request timeouts).
LOGIN_WAIT_S = 60.0
LISTENERS = ("ingress", "operator")  # "operator" only with its own [operator] port
ACTORS = ("store", "notifier", "broker", "watcher", "guard", "risk")
START_ORDER = LISTENERS + ACTORS
STOP_ORDER = tuple(reversed(START_ORDER))


def expired_on_restart(created_at: str, now: datetime, max_signal_age_s: float) -> str | None:
    """Why a CREATED order found at start-up must not be sent any more (its EXPIRED_ON_RESTART detail), or None
    when it may continue through the blockers. Never send an intent of an earlier trading day (IST), whatever
    max_signal_age_s says; otherwise an intent older than max_signal_age_s is stale."""
    created = datetime.fromisoformat(created_at)
    if trading_day(created) != trading_day(now):
        return "created on an earlier trading day"
    if created < now - timedelta(seconds=max_signal_age_s):
        return "older than max_signal_age_s at restart"
    return None


class StartRefused(Exception):
    """The service must not run (e.g. the broker refuses its credentials): one readable line, exit 2."""


class System:
    """The whole service in this process. `start()`, `stop()`, and helpers to inject and wait."""

    def __init__(self, config: Config, *, listen_port: int | None = None, log_to_stderr: bool = True,
                 clock=None, registry: Registry | None = None):
        self.config = config
        self.clock = clock  # UTC-aware datetime factory for risk (trading windows, day rollover); tests inject it
        self.listen_port = listen_port
        self.log_to_stderr = log_to_stderr
        self.registry = registry or Registry()  # tests pass a FaultyRegistry (tests/faults.py)
        self.db = None
        self.paper = None
        self.app: IngressApp | None = None
        self.port: int | None = None
        self.operator_app: IngressApp | None = None  # the same app unless [operator] port gives it a listener
        self.operator_port: int | None = None
        self.operator_token = ""
        self._log_ids: list[int] = []
        self.started = False
        self.supervisor: Supervisor | None = None
        self.factories: dict = {}
        self.fatal = threading.Event()  # set when the listener stopped on its own: the process must exit
        self.fatal_reason: str | None = None

    # ---- lifecycle ------------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return Path(self.config.service.data_dir)

    def _broker_urls(self) -> tuple[str, str]:
        b = self.config.broker
        if b.rest_url and b.ws_url:
            return b.rest_url, b.ws_url
        if b.mode == "paper":
            from runtime.paper import PaperExchange

            self.paper = PaperExchange(self.config.paper, default_state_file=self.data_dir / "paper_state.json")
            self.paper.start()
            logger.info("embedded paper exchange on {}", self.paper.base_url)
            return b.rest_url or self.paper.rest_url, b.ws_url or self.paper.ws_url
        return b.rest_url or LIVE_REST_URL, b.ws_url or LIVE_WS_URL

    def start(self) -> "System":
        # stderr only once started: a refused start (busy port, rejected login, newer database) is one line from
        # `oms run`; everything of the start-up is in the JSON log file.
        self._log_ids = setup_logging(self.data_dir, self.config.service.log_level, stderr=False)
        reg, cfg = self.registry, self.config
        # The broker session's state, kept across BrokerActor restarts and read by /health without an ask (from
        # the first request on: the listener is bound before the broker logs in).
        self.broker_session = SessionGate(websocket=cfg.broker.use_websocket)
        reg.broker_session = self.broker_session
        # The supervisor first: audits of requests refused while starting wait (parked) for the StoreActor.
        self.supervisor = Supervisor(reg, self.factories)
        reg.supervisor = self.supervisor
        # The listener before the database and the broker: a busy port fails at once (ListenerBindError, one
        # line); until recovery is done it answers 503 to /webhook and /health.
        self.operator_token = operator_token(cfg, create=True)
        separate = bool(cfg.operator.port)  # the operator surface on its own listener
        self.app = IngressApp(reg, cfg, operator_token=self.operator_token,
                              surfaces=(WEBHOOK,) if separate else (WEBHOOK, OPERATOR))
        port = cfg.service.port if self.listen_port is None else self.listen_port
        server = create_listener(self.app, cfg, port)
        reg.set("ingress", IngressActor.start(reg, cfg, app=self.app, port=port, server=server,
                                              on_death=self._listener_died))
        self.port = reg.ask("ingress", GetPort())
        self.factories["ingress"] = lambda: IngressActor.start(reg, cfg, app=self.app, port=self.port,
                                                               on_death=self._listener_died)
        self.operator_app = self.app
        self.operator_port = self.port
        if separate:
            # One lockout for both listeners: failures on either count against the same address.
            self.operator_app = IngressApp(reg, cfg, operator_token=self.operator_token, surfaces=(OPERATOR,),
                                           lockout=self.app.lockout)
            host = cfg.operator.host or cfg.service.host
            server = create_listener(self.operator_app, cfg, cfg.operator.port, host)
            reg.set("operator", OperatorIngressActor.start(reg, cfg, app=self.operator_app, port=cfg.operator.port,
                                                           server=server, on_death=self._listener_died, host=host))
            self.operator_port = reg.ask("operator", GetPort())
            self.factories["operator"] = lambda: OperatorIngressActor.start(
                reg, cfg, app=self.operator_app, port=self.operator_port, on_death=self._listener_died, host=host)
        self.db = open_database(self.data_dir / "orders.db", synchronous=self.config.service.db_synchronous)
        rest_url, ws_url = self._broker_urls()
        b = cfg.broker
        self.client = NorenRestClient(rest_url, auth=b.auth, connect_timeout_s=b.connect_timeout_s,
                                      request_timeout_s=b.request_timeout_s)
        self.factories.update({
            "store": lambda: StoreActor.start(self.db, reg, subscribers=SUBSCRIBERS),
            "notifier": lambda: NotifierActor.start(reg, cfg),
            "broker": lambda: BrokerActor.start(reg, cfg, client=self.client, ws_url=ws_url,
                                                gate=self.broker_session),
            "watcher": lambda: WatcherActor.start(reg, cfg),
            "guard": lambda: GuardActor.start(reg, cfg),
            "risk": lambda: RiskActor.start(reg, cfg, clock=self.clock),
        })
        for name in ACTORS:
            if name == "watcher":  # the first watcher knows recover() reads the book; a restarted one does not
                reg.set(name, WatcherActor.start(reg, cfg, startup=True))
            elif name == "broker":  # the first broker's refused credentials stop the start (_check_login)
                reg.set(name, BrokerActor.start(reg, cfg, client=self.client, ws_url=ws_url,
                                                gate=self.broker_session, startup=True))
                self._check_login()
            elif name == "guard":  # recover() dispatches the CREATED legs at start; a restarted guard resumes its own
                reg.set(name, GuardActor.start(reg, cfg, startup=True))
            else:
                reg.set(name, self.factories[name]())
        self.recover()
        reg.ask("ingress", Accept())
        if reg.get("operator") is not None:
            reg.ask("operator", Accept())
        self.started = True
        reg.tell("notifier", Notify(kind="service", text=f"shoonya-oms started ({cfg.broker.mode}, "
                                                         f"client {cfg.service.client_id})"))
        if self.log_to_stderr:
            self._log_ids.append(add_stderr_sink(self.config.service.log_level))
        logger.info("service ready on http://{}:{}", cfg.service.host, self.port)
        return self

    def _listener_died(self, reason: str) -> None:
        """The serving thread ended on its own: no alert (exits included) can arrive any more."""
        redactor = self.app.redactor if self.app is not None else None
        reason = redactor.text(reason) if redactor else reason
        self.fatal_reason = f"webhook listener on {self.config.service.host}:{self.port} stopped: {reason}"
        logger.bind(event="service").critical("{}; the service exits so that it is restarted", self.fatal_reason)
        self.registry.tell("notifier", Notify(kind="service", text=f"CRITICAL: {self.fatal_reason}. No alert can "
                                                                    f"arrive; the service exits (restart it)."))
        self.fatal.set()

    def _check_login(self) -> None:
        """Refuse to start when the broker rejects our credentials: retrying cannot help, and every retry brings
        the account closer to the broker's lock. A network failure is not a rejection: the service starts and
        keeps trying."""
        self.registry.ask("broker", GetSession(), timeout=LOGIN_WAIT_S)  # answered once its first login is done
        session = self.broker_session.snapshot()
        if session["refused"] and session["credentials"]:
            b = self.config.broker
            keys = "auth_code, oauth_client_id, api_secret" if b.auth == "oauth" else \
                "password, totp_secret, vendor_code, api_secret"
            why = session["reason"].removeprefix("broker login refused: ")
            raise StartRefused(f"the broker refused the login of {b.user_id or '(no user_id)'}: {why} "
                               f"(check [broker] {keys})")

    def recover(self) -> None:
        """Before the listener accepts alerts: reconcile with the broker, then settle CREATED orders.

        Our orders are first matched against the broker's OrderBook (by remarks = command_id): one read, made
        after the WebSocket has connected when it does so within WS_WAIT_AT_START_S, so that the watcher need
        not read the whole book again for that first connection; only rows that change something (or external
        orders not yet recorded) reach the store, and this waits until the store has applied them.
        CREATED orders were never sent (the SENT_TO_BROKER commit precedes every send): those older than
        max_signal_age_s become FAILED EXPIRED_ON_RESTART, younger ones continue through the blockers.
        """
        try:
            if self.config.broker.use_websocket:
                self._wait_for_websocket(WS_WAIT_AT_START_S)
            self.registry.ask("watcher", PollNow(), timeout=RECOVER_TIMEOUT_S)
            self.registry.ask("store", Sync(), timeout=RECOVER_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - a broker outage must not stop the service starting
            logger.warning("start-up reconciliation incomplete ({!r}); polling continues", exc)
        by_alert: dict[str, list[OrderSnapshot]] = {}
        now = datetime.now(timezone.utc)
        for row in queries.created_orders():
            why = expired_on_restart(row["created_at"], now, self.config.service.max_signal_age_s)
            if why:
                self.registry.ask("store", TransitionOrder(
                    command_id=row["command_id"], to_status=T.FAILED, expect_from=(T.CREATED,),
                    tag="EXPIRED_ON_RESTART", detail=why))
            else:
                by_alert.setdefault(row["alert_key"] or row["alert_id"], []).append(OrderSnapshot.model_validate(row))
        for orders in by_alert.values():
            self.registry.tell("store", AnnounceLegs(orders=tuple(orders)))
        if by_alert:
            logger.info("recovery: CREATED orders of {} alert(s) continue through the blockers", len(by_alert))

    def _wait_for_websocket(self, timeout_s: float) -> None:
        """Until the watcher has heard that the WebSocket is connected (or refused), at most timeout_s."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self.registry.ask("watcher", GetWatcherStatus(), timeout=RECOVER_TIMEOUT_S)
            if status["ws"] in ("connected", "auth_failed"):
                return
            time.sleep(0.01)
        logger.info("WebSocket not connected after {:.1f} s; reconciling with the OrderBook without it", timeout_s)

    def drain(self, timeout_s: float) -> bool:
        """Wait until no order is CREATED and every sent order has a broker id (or outcome is being resolved)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if queries.in_flight_count() == 0:
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        if not self.started and self.db is None and self.registry.get("ingress") is None:
            return
        if self.registry.get("ingress") is not None:
            for name in LISTENERS:  # stop taking alerts before anything else stops
                if self.registry.get(name) is None:
                    continue
                try:
                    self.registry.ask(name, Refuse(), timeout=5)
                except (pykka.ActorDeadError, pykka.Timeout):
                    pass
            if self.started and self.db is not None and not self.drain(self.config.service.shutdown_drain_s):
                logger.warning("stopping with orders still in flight; restart recovery will settle them")
        self.registry.tell("notifier", Notify(kind="service", text="shoonya-oms stopping"))
        if self.supervisor is not None:
            self.supervisor.stopping = True
        for name in STOP_ORDER:
            ref = self.registry.get(name)
            if ref is not None:
                try:
                    ref.stop(timeout=15)
                    logger.debug("actor {} stopped", name)
                except (pykka.ActorDeadError, pykka.Timeout):
                    logger.warning("actor {} did not stop cleanly", name)
        if self.paper is not None:
            self.paper.stop()
            self.paper = None
        if self.db is not None:
            close_database(self.db)
        self.db = None
        self.started = False
        logger.info("service stopped")
        remove_logging(self._log_ids)

    def __enter__(self) -> "System":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- in-process injection (tests, tools) ----------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.config.service.host}:{self.port}"

    @property
    def operator_url(self) -> str:
        host = self.config.operator.host if self.operator_port != self.port and self.config.operator.host else \
            self.config.service.host
        return f"http://{host}:{self.operator_port}"

    @property
    def operator_headers(self) -> dict[str, str]:
        """What a client of the operator surface sends (the `oms` commands, the tests)."""
        return {"Authorization": f"Bearer {self.operator_token}"}

    def inject_alert(self, payload: dict | bytes | str, headers: dict[str, str] | None = None,
                     remote_addr: str = "127.0.0.1") -> tuple[int, Any]:
        """Run one webhook request through the ingress exactly as the listener would (no socket)."""
        body = payload if isinstance(payload, bytes) else (
            payload.encode() if isinstance(payload, str) else json.dumps(payload).encode())
        environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/webhook", "CONTENT_LENGTH": str(len(body)),
                   "wsgi.input": io.BytesIO(body), "REMOTE_ADDR": remote_addr}
        for key, value in (headers or {}).items():
            environ["HTTP_" + key.upper().replace("-", "_")] = value
        return self.app.route("POST", "/webhook", environ)

    def inject(self, actor: str, message) -> None:
        """Tell any actor any message (e.g. a BrokerOrderReport to the watcher)."""
        self.registry.tell(actor, message)

    def order(self, command_id: str) -> dict | None:
        return queries.get_order(command_id)

    def orders(self, **filters) -> list[dict]:
        return queries.list_orders(limit=10000, **filters)

    def wait_until(self, predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.01)

    def wait_for_status(self, command_id: str, statuses: str | Iterable[str], timeout: float = 10.0) -> dict:
        wanted = {statuses} if isinstance(statuses, str) else set(statuses)

        def reached():
            order = queries.get_order(command_id)
            return order if order and order["status"] in wanted else None

        try:
            return self.wait_until(reached, timeout, f"{command_id} to reach {sorted(wanted)}")
        except TimeoutError:
            current = queries.get_order(command_id)
            raise TimeoutError(f"{command_id} did not reach {sorted(wanted)} in {timeout}s; it is "
                               f"{current and current['status']} {current and current['tag']}") from None

    def notifications(self) -> dict:
        return self.registry.ask("notifier", GetNotifierStats(), timeout=5)
