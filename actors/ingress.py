"""IngressActor: the HTTP listener (webhook + read API).

The plain parts — parsing, authentication, leg validation, redaction, building the legs — are functions
that tests call directly. `IngressApp` is the WSGI application; `IngressActor` owns the waitress server.
The 202 goes out only after StoreActor has committed every leg (an `ask`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import parse_qs

import pykka
from loguru import logger
from pydantic import ValidationError

from actors.base import SupervisedActor
from actors.dashboard import reads
from messages.alerts import WebhookAlert, WebhookLeg
from messages.commands import (
    CancelOrder,
    GetState,
    Notify,
    OrdersRegistered,
    RecordAlert,
    RegisterAlert,
    RegisterResult,
)
from messages.orders import NewOrder
from storage import queries

EXCHANGES = frozenset({"NSE", "NFO", "BSE", "BFO", "MCX", "CDS"})
REGISTER_TIMEOUT_S = 2.5  # the 202 must leave well inside TradingView's 3 s

_SECRET_FIELD = re.compile(r'("secret_key"\s*:\s*)("(?:[^"\\]|\\.)*"|[^,}\s]+)', re.IGNORECASE)
MAX_QTY = 10_000_000  # far above any freeze quantity; keeps absurd numbers out of the database


def new_command_id() -> str:
    """20 characters, globally unique; travels to the broker as `remarks`."""
    return "oms" + uuid.uuid4().hex[:17]


def redact(text: str, secret: str) -> str:
    """Remove the secret (and any secret_key value, right or wrong) from text bound for a log or table."""
    text = _SECRET_FIELD.sub(r'\1"***"', text)
    if secret:
        text = text.replace(secret, "***")
    return text


def signature_ok(body: bytes, signature: str | None, secret: str) -> bool:
    if not signature or not secret:
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature.strip().lower())


def secret_ok(given: str | None, secret: str) -> bool:
    return bool(secret) and isinstance(given, str) and hmac.compare_digest(given.encode(), secret.encode())


def format_validation_errors(exc: ValidationError) -> list[str]:
    errors = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ())) or "body"
        msg = err.get("msg", "invalid")
        msg = msg.removeprefix("Value error, ")
        errors.append(f"{loc}: {msg}")
    return errors


def leg_problems(leg: WebhookLeg, exchange: str | None) -> list[str]:
    """Reasons (UPPER_SNAKE) why a well-formed leg cannot be sent; empty when it can."""
    problems = []
    if leg.qty <= 0:
        problems.append("QTY_NOT_POSITIVE")
    elif leg.qty > MAX_QTY:
        problems.append("QTY_TOO_LARGE")
    elif leg.qty != int(leg.qty):
        problems.append("QTY_NOT_INTEGER")
    if exchange not in EXCHANGES:
        problems.append("UNKNOWN_EXCHANGE" if exchange else "EXCHANGE_MISSING")
    if leg.price < 0:
        problems.append("PRICE_NEGATIVE")
    if leg.order_type in ("LIMIT", "SL") and leg.price <= 0:
        problems.append("PRICE_REQUIRED")
    if leg.order_type in ("SL", "SL-M") and (leg.trigger_price is None or leg.trigger_price <= 0):
        problems.append("TRIGGER_PRICE_REQUIRED")
    return problems


def alert_fingerprint(alert: WebhookAlert) -> str:
    """sha256 of what the alert asks for, after parsing: aliases, key case, "65" vs 65 and the alert-level
    exchange are normalised away, so a retry matches and a different alert under the same alert_id does not."""
    legs = [{"tradingsymbol": leg.tradingsymbol.upper(), "exchange": (leg.exchange or alert.exchange or ""),
             "direction": leg.direction, "qty": leg.qty, "order_type": leg.order_type, "price": leg.price,
             "trigger_price": leg.trigger_price, "product_type": leg.product_type} for leg in alert.legs]
    content = {"strategy_name": alert.strategy_name, "execution_type": alert.execution_type, "legs": legs}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def build_orders(alert: WebhookAlert, alert_id: str, client_id: str, source: str,
                 make_id: Callable[[], str] = new_command_id) -> list[NewOrder]:
    """The alert's legs as rows to register. A leg that parsed but cannot be sent is FAILED
    VALIDATION_FAILED:<why>; in an ENTRY alert the other legs then fail with it (OTHER_LEG_BLOCKED): the legs of
    a spread go out together or not at all."""
    problems_by_leg = [leg_problems(leg, leg.exchange or alert.exchange) for leg in alert.legs]
    faulty = next((i for i, p in enumerate(problems_by_leg) if p), None)
    orders = []
    for index, leg in enumerate(alert.legs):
        exchange = leg.exchange or alert.exchange
        problems = problems_by_leg[index]
        if not problems and faulty is not None and alert.execution_type == "ENTRY":
            problems = ["OTHER_LEG_BLOCKED"]
        orders.append(NewOrder(
            command_id=make_id(), alert_id=alert_id, client_id=client_id, source=source,
            strategy_name=alert.strategy_name, execution_type=alert.execution_type,
            exchange=exchange or "", symbol=leg.tradingsymbol, side=leg.direction,
            quantity=int(leg.qty) if abs(leg.qty) <= MAX_QTY and leg.qty == int(leg.qty) else 0,
            product=leg.product_type,
            order_type=leg.order_type, price=leg.price, trigger_price=leg.trigger_price,
            status="FAILED" if problems else "CREATED",
            tag=f"VALIDATION_FAILED:{','.join(problems)}" if problems else None,
            leg_index=index,
        ))
    return orders


@dataclass
class Outcome:
    """What the listener answers, and what it records."""

    status: int
    body: dict[str, Any]
    outcome: str = ""
    alert: WebhookAlert | None = None
    errors: list[str] = field(default_factory=list)


def parse_webhook(body: bytes, signature: str | None, secret: str) -> Outcome:
    """Steps before registration: JSON, authentication, shape. Pure."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        errors = [f"body: not valid JSON ({exc})" if isinstance(exc, json.JSONDecodeError) else "body: not UTF-8"]
        return Outcome(400, {"error": "malformed JSON", "errors": errors}, "invalid", errors=errors)
    if not isinstance(data, dict):
        errors = ["body: the alert must be a JSON object"]
        return Outcome(400, {"error": "wrong shape", "errors": errors}, "invalid", errors=errors)
    lowered = {str(k).lower(): v for k, v in data.items()}
    if not (signature_ok(body, signature, secret) or secret_ok(lowered.get("secret_key"), secret)):
        return Outcome(401, {"error": "unauthorized: bad or missing secret_key / X-Signature"}, "unauthorized",
                       errors=["unauthorized"])
    try:
        alert = WebhookAlert.model_validate(data)
    except ValidationError as exc:
        errors = format_validation_errors(exc)
        return Outcome(400, {"error": "wrong shape", "errors": errors}, "invalid", errors=errors)
    return Outcome(202, {}, "accepted", alert=alert)


class IngressApp:
    """The WSGI application: POST /webhook and the read API."""

    def __init__(self, registry, config):
        self.registry = registry
        self.config = config
        self.accepting = threading.Event()
        self.ready = threading.Event()
        # The dashboard (/ui/): its own WSGI app (Flask), built once, calling this app's operator functions.
        from actors.dashboard.app import create_dashboard

        self.dashboard = create_dashboard(self, registry, config)

    # ---- WSGI plumbing --------------------------------------------------------------------------

    def __call__(self, environ, start_response):
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "/") or "/"
        if path == "/" or path.startswith("/ui"):
            return self.dashboard(environ, start_response)
        try:
            status, payload = self.route(method, path, environ)
        except Exception:  # noqa: BLE001 - the listener must answer, and the failure must be visible
            logger.exception("listener error on {} {}", method, path)
            status, payload = 500, {"error": "internal error"}
        data = json.dumps(payload, default=str).encode()
        start_response(f"{status} {_REASONS.get(status, 'OK')}",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]

    def route(self, method: str, path: str, environ) -> tuple[int, Any]:
        path = "/" + path.strip("/")
        if path == "/webhook":
            if method != "POST":
                return 405, {"error": "use POST"}
            return self.webhook(environ)
        if method == "GET":
            query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
            if path == "/health":
                ok = self.ready.is_set()
                return (200 if ok else 503), {"status": "ok" if ok else "starting",
                                              "accepting": self.accepting.is_set()}
            if path == "/orders":
                try:
                    limit = int(query.get("limit", 100))
                except ValueError:
                    return 400, {"error": "limit must be an integer"}
                return 200, queries.list_orders(query.get("status"), query.get("strategy"),
                                                query.get("symbol"), limit)
            if path.startswith("/orders/"):
                order = queries.get_order(path.split("/", 2)[2])
                return (200, order) if order else (404, {"error": "no such order"})
            if path == "/positions":
                return 200, reads.position_rows(reads.market(self.registry))
            if path == "/strategies":
                return 200, reads.strategy_rows(reads.market(self.registry))
            if path == "/diagnostics":
                return 200, {"counts": queries.counts_by_status(),
                             "stuck": queries.stuck_orders(self.config.service.stuck_after_s),
                             "one_legged": queries.one_legged_alerts(),
                             "accepting": self.accepting.is_set()}
            if path == "/risk":
                return 200, self.registry.ask("risk", GetState(), timeout=5)
        if method == "POST" and path in ("/risk/halt", "/risk/resume", "/risk/reduce", "/risk/flatten",
                                         "/risk/flatten/stop"):
            # The risk commands' parsing and authentication live with RiskActor.
            from actors.risk import risk_request

            data = self._operator_body(environ, path.lstrip("/"))
            if isinstance(data, tuple):
                return data
            request = risk_request(path, data)
            if isinstance(request, tuple):
                return request
            reply = self.registry.ask("risk", request, timeout=15)
            if path == "/risk/resume" and isinstance(reply, dict) and reply.get("state") != "ACTIVE":
                return 409, reply  # resumed the operator's mode, but a breach or cooldown still blocks entries
            return 200, reply
        if method == "POST" and path == "/positions/exit":
            return self.exit_positions(environ)
        if method == "POST" and path == "/orders/cancel":
            return self.cancel_orders(environ)
        return 404, {"error": f"no route {method} {path}"}

    # ---- operator commands: exits on demand, cancel-all -----------------------------------------

    def _operator_body(self, environ, action: str) -> dict | tuple[int, dict]:
        """The JSON body of an operator command, authenticated with the webhook secret (or the refusal)."""
        remote = environ.get("REMOTE_ADDR")
        secret = self.config.webhook.secret_key
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > self.config.service.max_body_bytes:
            self._record(RecordAlert(source="manual", outcome="too_large", http_status=413, remote_addr=remote,
                                     error=f"{action}: body too large"))
            return 413, {"error": "body too large"}
        body = environ["wsgi.input"].read(length) if length else b""
        try:
            data = json.loads(body.decode("utf-8")) if body.strip() else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            data = None
        if not isinstance(data, dict):
            self._record(RecordAlert(source="manual", outcome="invalid", http_status=400, remote_addr=remote,
                                     body=redact(body.decode("utf-8", "replace"), secret), error=f"{action}: not a JSON object"))
            return 400, {"error": "the body must be a JSON object"}
        data = {str(k).lower(): v for k, v in data.items()}
        if not (signature_ok(body, environ.get("HTTP_X_SIGNATURE"), secret) or secret_ok(data.get("secret_key"), secret)):
            self._record(RecordAlert(source="manual", outcome="unauthorized", http_status=401, remote_addr=remote,
                                     body=redact(body.decode("utf-8", "replace"), secret), error=action))
            return 401, {"error": "unauthorized: bad or missing secret_key / X-Signature"}
        data.pop("secret_key", None)
        for key in ("strategy", "symbol", "exchange"):
            if data.get(key) is not None and (not isinstance(data[key], str) or not data[key].strip()):
                return 400, {"error": f"{key} must be a non-empty string"}
        qty = data.get("qty")
        if qty is not None and (isinstance(qty, bool) or not isinstance(qty, int) or qty <= 0):
            return 400, {"error": "qty must be a positive integer"}
        data["_remote"] = remote
        return data

    def exit_positions(self, environ) -> tuple[int, Any]:
        """POST /positions/exit {"secret_key", "strategy"?, "symbol"?, "exchange"?, "qty"?}: EXIT intents for the
        strategies' positions (from our own fills), registered and sent through the normal pipeline."""
        data = self._operator_body(environ, "positions/exit")
        if isinstance(data, tuple):
            return data
        return self.request_exits(data, source="manual", remote=data["_remote"])

    def request_exits(self, data: dict, *, source: str, remote: str | None) -> tuple[int, Any]:
        """Register EXIT alerts for the positions matching data's `strategy`/`symbol`/`exchange` (all when none),
        at most `qty` each; also what the dashboard's Exit buttons call (source "dashboard")."""
        positions = [p for p in queries.strategy_positions()
                     if (not data.get("strategy") or p["strategy_name"] == data["strategy"])
                     and (not data.get("symbol") or p["symbol"] == data["symbol"])
                     and (not data.get("exchange") or p["exchange"] == data["exchange"].upper())]
        if not positions:
            return 404, {"error": "no strategy position matches", "positions": []}
        by_strategy: dict[str, list[dict]] = {}
        for p in positions:
            by_strategy.setdefault(p["strategy_name"], []).append(p)
        batch = uuid.uuid4().hex[:12]
        answers = []
        for strategy, held in sorted(by_strategy.items()):
            legs = [{"tradingsymbol": p["symbol"], "exchange": p["exchange"], "product_type": p["product"],
                     "direction": "SELL" if p["net_qty"] > 0 else "BUY", "order_type": "MARKET",
                     "qty": min(abs(p["net_qty"]), data["qty"]) if data.get("qty") else abs(p["net_qty"])}
                    for p in held]
            alert = WebhookAlert.model_validate({"alert_id": f"{source}-exit-{batch}-{strategy}"[:200],
                                                 "strategy_name": strategy, "execution_type": "EXIT",
                                                 "legs": legs})
            status, answer = self.register(alert, source=source, remote=remote,
                                           body=json.dumps({k: v for k, v in data.items() if k != "_remote"}))
            if status not in (200, 202):
                return status, answer
            answers.append(answer)
        return 202, {"alerts": answers, "orders": [o for a in answers for o in a["orders"]]}

    def cancel_orders(self, environ) -> tuple[int, Any]:
        """POST /orders/cancel {"secret_key", "strategy"?, "symbol"?}: cancel our open orders at the broker."""
        data = self._operator_body(environ, "orders/cancel")
        if isinstance(data, tuple):
            return data
        return self.request_cancels(data, source="manual", remote=data["_remote"])

    def request_cancels(self, data: dict, *, source: str, remote: str | None) -> tuple[int, Any]:
        """Cancel our open orders matching data's `strategy`/`symbol` (all when none), or exactly the one
        `command_id` given (the dashboard's Cancel button)."""
        if data.get("command_id") is not None and not isinstance(data["command_id"], str):
            return 400, {"error": "command_id must be a string"}
        if data.get("command_id"):
            one = queries.get_order(data["command_id"])
            open_orders = [one] if one and one["status"] in ("SENT_TO_BROKER", "PARTIAL") else []
        else:
            open_orders = [o for status in ("SENT_TO_BROKER", "PARTIAL")
                           for o in queries.list_orders(status, data.get("strategy"), data.get("symbol"), 10000)]
        for order in open_orders:
            self.registry.tell("broker", CancelOrder(command_id=order["command_id"], reason=f"{source} cancel"))
        ids = [o["command_id"] for o in open_orders]
        self._record(RecordAlert(source=source, outcome="cancel_requested", http_status=202,
                                 remote_addr=remote, strategy_name=data.get("strategy"),
                                 body=json.dumps({k: v for k, v in data.items() if k != "_remote"}),
                                 error=f"cancel requested for {len(ids)} order(s): {' '.join(ids)}"[:2000]))
        return 202, {"cancel_requested": ids}

    # ---- POST /webhook --------------------------------------------------------------------------

    def webhook(self, environ) -> tuple[int, Any]:
        received = time.monotonic()
        remote = environ.get("REMOTE_ADDR")
        secret = self.config.webhook.secret_key
        limit = self.config.service.max_body_bytes
        if not self.accepting.is_set():
            self._record(RecordAlert(outcome="unavailable", http_status=503, remote_addr=remote,
                                     error="service is not accepting alerts (starting or stopping)"))
            return 503, {"error": "service is not accepting alerts now; retry later"}
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > limit:
            self._record(RecordAlert(outcome="too_large", http_status=413, remote_addr=remote,
                                     error=f"body of {length} bytes over the {limit} byte limit"))
            return 413, {"error": f"body over the {limit} byte limit"}
        body = environ["wsgi.input"].read(min(length, limit + 1)) if length else environ["wsgi.input"].read(limit + 1)
        if len(body) > limit:
            self._record(RecordAlert(outcome="too_large", http_status=413, remote_addr=remote,
                                     error=f"body over the {limit} byte limit"))
            return 413, {"error": f"body over the {limit} byte limit"}
        redacted = redact(body.decode("utf-8", "replace"), secret)
        result = parse_webhook(body, environ.get("HTTP_X_SIGNATURE"), secret)
        if result.alert is None:
            self._record(RecordAlert(outcome=result.outcome, http_status=result.status, remote_addr=remote,
                                     body=redacted, error="; ".join(result.errors)[:2000]))
            return result.status, result.body
        alert = result.alert
        if len(alert.legs) > self.config.service.max_legs:
            error = f"legs: at most {self.config.service.max_legs} legs per alert"
            self._record(RecordAlert(outcome="invalid", http_status=400, remote_addr=remote, body=redacted,
                                     alert_id=alert.alert_id, strategy_name=alert.strategy_name, error=error))
            return 400, {"error": "wrong shape", "errors": [error]}
        return self.register(alert, source="webhook", remote=remote, body=redacted, received_mono=received)

    def register(self, alert: WebhookAlert, *, source: str, remote: str | None = None,
                 body: str | None = None, received_mono: float | None = None) -> tuple[int, Any]:
        alert_id = alert.alert_id or f"auto-{uuid.uuid4().hex[:16]}"
        legs = build_orders(alert, alert_id, self.config.service.client_id, source)
        msg = RegisterAlert(alert_id=alert_id, source=source, remote_addr=remote,
                            strategy_name=alert.strategy_name, body=body, legs=tuple(legs),
                            received_mono=received_mono, fingerprint=alert_fingerprint(alert))
        try:
            future = self.registry.ask_future("store", msg)
            result: RegisterResult = future.get(timeout=REGISTER_TIMEOUT_S)
        except pykka.Timeout:
            # The commit may still land: if it does, its legs must not sit CREATED until a restart.
            logger.error("alert {}: registration did not complete in {}s; answering 503", alert_id,
                         REGISTER_TIMEOUT_S)
            threading.Thread(target=self._late_registration, args=(future, alert_id, alert), daemon=True,
                             name=f"late-{alert_id}"[:40]).start()
            return 503, {"error": "could not register the alert in time; retry with the same alert_id",
                         "alert_id": alert_id}
        except Exception as exc:  # noqa: BLE001 - a dead store: say so, never pretend
            logger.error("alert {}: registration failed: {!r}", alert_id, exc)
            return 503, {"error": "could not register the alert; retry with the same alert_id",
                         "alert_id": alert_id}
        self._dispatch(result, alert_id, alert)
        return result.http_status, result.response

    def _dispatch(self, result: RegisterResult, alert_id: str, alert: WebhookAlert) -> None:
        """Send a freshly registered alert's CREATED legs on to the blockers."""
        if result.duplicate:
            return
        if result.note:
            logger.bind(event="alert_id_reused", alert_id=alert_id).warning("alert {}: {}", alert_id, result.note)
            self.registry.tell("notifier", Notify(
                kind="alert", text=f"Alert {alert_id} ({alert.strategy_name} {alert.execution_type}): the "
                                   f"alert_id was used before for different content; traded as a new alert. Make "
                                   f"alert_ids unique (see README)."))
        created = tuple(o for o in result.orders if o.status == "CREATED")
        self.registry.tell("notifier", Notify(
            kind="alert", text=f"Alert {alert_id} {alert.strategy_name} {alert.execution_type}: "
                               f"{len(result.orders)} leg(s)"))
        if created:
            self.registry.tell("risk", OrdersRegistered(orders=created))

    def _late_registration(self, future, alert_id: str, alert: WebhookAlert) -> None:
        try:
            result: RegisterResult = future.get(timeout=300)
        except Exception as exc:  # noqa: BLE001 - never committed: nothing to send; a retry will register it
            logger.error("alert {}: registration never completed ({!r})", alert_id, exc)
            return
        logger.warning("alert {}: registered late (after its 503); its legs continue", alert_id)
        self._dispatch(result, alert_id, alert)

    def _record(self, msg: RecordAlert) -> None:
        self.registry.tell("store", msg)


_REASONS = {200: "OK", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 413: "Payload Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}


class IngressActor(SupervisedActor):
    """Owns the waitress listener; the request threads use IngressApp."""

    registry_name = "ingress"

    def __init__(self, registry, config, *, app: IngressApp | None = None, port: int | None = None):
        super().__init__(registry)
        self.app = app or IngressApp(registry, config)
        self.config = config
        self.port = config.service.port if port is None else port
        self.server = None
        self.thread: threading.Thread | None = None

    def on_start(self):
        from waitress.server import create_server

        self.server = create_server(
            self.app, host=self.config.service.host, port=self.port,
            threads=self.config.service.listener_threads,
            # Well above our own limit so oversized alerts reach the app and are audited as too_large;
            # only absurd bodies are refused by the server itself.
            max_request_body_size=max(16 * 1024 * 1024, self.config.service.max_body_bytes * 16),
            connection_limit=1000, channel_timeout=30, clear_untrusted_proxy_headers=True,
            ident="shoonya-oms",
        )
        self.port = self.server.effective_port
        self.thread = threading.Thread(target=self._serve, name="ingress-listener", daemon=True)
        self.thread.start()
        logger.info("listener on http://{}:{}", self.config.service.host, self.port)

    def _serve(self):
        try:
            self.server.run()
        except (OSError, ValueError):  # closed during shutdown
            pass

    def handle(self, message):
        if message == "port":
            return self.port
        if message == "accept":
            self.app.ready.set()
            self.app.accepting.set()
            return True
        if message == "refuse":
            self.app.accepting.clear()
            return True
        return None

    def on_stop(self):
        self.app.accepting.clear()
        if self.server is not None:
            self.server.close()
        if self.thread is not None:
            self.thread.join(timeout=5)
