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
import resource
import threading
import time
import traceback
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import parse_qs

import pykka
from loguru import logger
from pydantic import ValidationError

from actors.access import Addresses, Lockout, bearer, check_signature, constant_equal, signature_key
from actors.base import SupervisedActor
from actors.operator_requests import risk_request
from actors.dashboard import reads
from messages.alerts import WebhookAlert, WebhookLeg
from messages.commands import (
    CancelOrder,
    ClaimSignature,
    GetState,
    Notify,
    RecordAlert,
    RegisterAlert,
    RegisterResult,
)
from messages.control import Accept, GetPort, Refuse
from messages.orders import EXCHANGES, NewOrder, new_command_id
from storage import queries

REGISTER_TIMEOUT_S = 2.5  # the 202 must leave well inside TradingView's 3 s
# Signatures are remembered a little longer than the +/-5 minute window in which one is accepted at all.
SIGNATURE_MEMORY_S = 900.0
HEALTH_ASK_S = 0.3  # /health's wait for the risk state: a health check must answer fast

_SECRET_FIELD = re.compile(r'("secret_key"\s*:\s*)("(?:[^"\\]|\\.)*"|[^,}\s]+)', re.IGNORECASE)
MAX_QTY = 10_000_000  # far above any freeze quantity; keeps absurd numbers out of the database
# A real alert is 3 levels deep (object > legs > leg). Capped before parsing: Python's json recurses and raises
# RecursionError on deep nesting, and pydantic walks what it is given.
MAX_JSON_DEPTH = 20
# Python refuses int() of more than 4300 digits (ValueError); no price or quantity needs more than this.
MAX_NUMBER_CHARS = 40
MAX_ERRORS = 20  # a 400 lists at most this many shape errors
REFUSAL_WINDOW_S = 60.0  # at most one "refused requests" notification per window
_BRACKETS = re.compile(r"[\[\]{}]")
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|.)", re.S)
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}
REDACTED = "***"


class BodyError(ValueError):
    """A request body that is not an acceptable JSON document; the message never quotes the body."""


def _is_secret_key_name(key: Any) -> bool:
    return isinstance(key, str) and key.strip().lower() == "secret_key"


def _unescape(text: str) -> str:
    """JSON string escapes decoded wherever they stand (lenient: for text that is not valid JSON)."""
    def one(m: re.Match) -> str:
        esc = m.group(1)
        if esc[0] == "u" and len(esc) == 5:
            return chr(int(esc[1:], 16))
        return _SIMPLE_ESCAPES.get(esc, esc)

    out = _ESCAPE.sub(one, text)
    # join surrogate pairs; a lone surrogate becomes U+FFFD (it cannot be stored as UTF-8)
    return out.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class Redactor:
    """Removes known secret values (webhook secret, broker and Telegram secrets) from what we store or show.

    `document` works on the parsed JSON, so no spelling of a key or value (escapes, case of `secret_key`)
    hides a secret; `raw` is for a body that could not be parsed; `text` for our own messages.
    """

    def __init__(self, secrets: Any = ()):
        values = {s for s in secrets if isinstance(s, str) and s}
        self.secrets = sorted(values, key=len, reverse=True)  # longest first: a secret inside another
        spellings = set(values)
        for s in values:  # how the secret looks JSON-escaped or repr()-ed inside a message
            spellings.update({json.dumps(s)[1:-1], json.dumps(s, ensure_ascii=False)[1:-1], repr(s)[1:-1]})
        self.spellings = sorted((x for x in spellings if x), key=len, reverse=True)

    @classmethod
    def from_config(cls, config, *extra: str) -> "Redactor":
        b, t, o = config.broker, getattr(config, "telegram", None), getattr(config, "operator", None)
        return cls([config.webhook.secret_key, b.password, b.totp_secret, b.api_secret, b.auth_code,
                    getattr(t, "token", ""), getattr(config.webhook, "path_token", ""), getattr(o, "token", ""),
                    getattr(o, "password", ""), *extra])

    def text(self, text: str | None) -> str | None:
        if not text:
            return text
        for spelling in self.spellings:
            if spelling in text:
                text = text.replace(spelling, REDACTED)
        return text

    def document(self, value: Any) -> Any:
        """A copy of a parsed JSON value with every secret_key value and every known secret replaced."""
        if isinstance(value, dict):
            return {self.text(str(k)): (REDACTED if _is_secret_key_name(k) else self.document(v))
                    for k, v in value.items()}
        if isinstance(value, list):
            return [self.document(v) for v in value]
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and str(value) in self.secrets:
            return REDACTED
        return value

    def dumps(self, value: Any) -> str:
        """The redacted document as JSON text for the audit row."""
        text = json.dumps(self.document(value), ensure_ascii=False, default=str)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: the escaped spelling is storable
            text = json.dumps(self.document(value), default=str)
        return text

    def raw(self, text: str) -> str:
        """A body that could not be parsed: any secret_key value and every secret in any JSON spelling."""
        out = self.text(_SECRET_FIELD.sub(r'\1"***"', text))
        plain = _unescape(out)
        if plain != out:
            redacted = self.text(_SECRET_FIELD.sub(r'\1"***"', plain))
            if redacted != plain:  # something hid behind escapes: keep the decoded, redacted spelling
                out = redacted
        return out.encode("utf-8", "replace").decode("utf-8")

    def found_in(self, value: Any, path: str = "body") -> str | None:
        """Where a known secret appears outside a secret_key value (the first such place), else None."""
        if not self.secrets:
            return None
        if isinstance(value, dict):
            for k, v in value.items():
                key = str(k)
                if any(s in key for s in self.secrets):
                    return f"{path} (a key)"
                if _is_secret_key_name(k):
                    continue
                where = self.found_in(v, f"{path}.{key.strip().lower()}" if path != "body" else key.strip().lower())
                if where:
                    return where
            return None
        if isinstance(value, list):
            for i, v in enumerate(value):
                where = self.found_in(v, f"{path}.{i}")
                if where:
                    return where
            return None
        if isinstance(value, str):
            return path if any(s in value for s in self.secrets) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return path if str(value) in self.secrets else None
        return None


def redact(text: str, secret: str) -> str:
    """Remove the secret (and any secret_key value, right or wrong) from raw text bound for a log or table."""
    return Redactor([secret]).raw(text)


def json_depth_exceeds(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """True if arrays/objects nest deeper than `limit` (strings skipped; no recursion)."""
    depth = 0
    for m in _BRACKETS.finditer(_JSON_STRING.sub('""', text)):
        if m.group() in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_NUMBER_CHARS:
        raise BodyError(f"body: a number has more than {MAX_NUMBER_CHARS} digits")
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise BodyError(f"body: a number is longer than {MAX_NUMBER_CHARS} characters")
    return float(text)


def _check_strings(value: Any) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _check_strings(k)
            _check_strings(v)
    elif isinstance(value, list):
        for v in value:
            _check_strings(v)
    elif isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise BodyError("body: a string holds an invalid \\u escape (a lone surrogate)") from None


def parse_json(body: bytes) -> Any:
    """The JSON document of a request body, or BodyError: any depth, any number, any bytes; never another error."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyError("body: not UTF-8") from None
    if json_depth_exceeds(text):
        raise BodyError(f"body: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        data = json.loads(text, parse_int=_parse_int, parse_float=_parse_float)
    except BodyError:
        raise
    except json.JSONDecodeError as exc:  # its message names a position, never the content
        raise BodyError(f"body: not valid JSON ({exc.msg}: line {exc.lineno} column {exc.colno})") from None
    except (ValueError, RecursionError, MemoryError, TypeError):
        raise BodyError("body: not valid JSON") from None
    _check_strings(data)
    return data


def secret_ok(given: str | None, secret: str) -> bool:
    if not secret or not isinstance(given, str):
        return False
    try:
        given_bytes = given.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate cannot be the secret
        return False
    return hmac.compare_digest(given_bytes, secret.encode())


def format_validation_errors(exc: ValidationError, redactor: Redactor | None = None) -> list[str]:
    """`loc: message` lines; the given values are never echoed (one could be a pasted secret)."""
    errors = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err.get("loc", ())) or "body"
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        given = err.get("input")
        if isinstance(given, str) and given:
            msg = msg.replace(repr(given), "(the given value)")
        if redactor is not None:
            loc, msg = redactor.text(loc), redactor.text(msg)
        errors.append(f"{loc}: {msg}")
        if len(errors) >= MAX_ERRORS:
            errors.append(f"... {len(exc.errors()) - MAX_ERRORS} more")
            break
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
    stored_body: str | None = None  # the request body for the audit row, secrets redacted


def parse_webhook(body: bytes, secret: str, redactor: Redactor | None = None, *,
                  authenticated: bool = False) -> Outcome:
    """Steps before registration: JSON, authentication, shape. Pure; never raises for any body.

    `authenticated`: the request already proved itself (a path token, a fresh signature); otherwise the body's
    `secret_key` must be the webhook secret."""
    redactor = redactor or Redactor([secret])

    def refuse(status: int, error: str, outcome: str, errors: list[str], stored: str | None) -> Outcome:
        errors = [redactor.text(e) for e in errors]
        answer = {"error": error} if status == 401 else {"error": error, "errors": errors}
        return Outcome(status, answer, outcome, errors=errors, stored_body=stored)

    try:
        data = parse_json(body)
    except BodyError as exc:
        error = "wrong shape" if "nested" in str(exc) or "number" in str(exc) else "malformed JSON"
        return refuse(400, error, "invalid", [str(exc)], redactor.raw(body.decode("utf-8", "replace")))
    stored = redactor.dumps(data)
    if not isinstance(data, dict):
        return refuse(400, "wrong shape", "invalid", ["body: the alert must be a JSON object"], stored)
    lowered = {str(k).strip().lower(): v for k, v in data.items()}
    if not (authenticated or secret_ok(lowered.get("secret_key"), secret)):
        return refuse(401, "unauthorized: bad or missing secret_key / X-Signature", "unauthorized",
                      ["unauthorized"], stored)
    where = redactor.found_in(data)
    if where:  # refused rather than stored in orders, logs and notifications
        return refuse(400, "wrong shape", "invalid",
                      [f"{where}: holds a configured secret; only secret_key may (nothing was stored)"], stored)
    try:
        alert = WebhookAlert.model_validate(data)
    except ValidationError as exc:
        return refuse(400, "wrong shape", "invalid", format_validation_errors(exc, redactor), stored)
    except (ValueError, TypeError, RecursionError) as exc:  # a validator choking on odd input is still a 400
        return refuse(400, "wrong shape", "invalid", [f"body: cannot be read as an alert ({type(exc).__name__})"],
                      stored)
    return Outcome(202, {}, "accepted", alert=alert, stored_body=stored)


class RefusalDigest:
    """Notifications about refused requests (400/401/413), at most one per window: the first refusal is told at
    once, the ones after it are counted and told as one summary when the window ends. A scanner cannot flood
    Telegram. Plain logic; IngressApp calls `due` from a timer."""

    def __init__(self, window_s: float = REFUSAL_WINDOW_S, clock: Callable[[], float] = time.monotonic):
        self.window_s = window_s
        self.clock = clock
        self.next_at = 0.0
        self.counts: Counter = Counter()
        self.remotes: Counter = Counter()
        self._lock = threading.Lock()

    def add(self, http_status: int, outcome: str, remote: str | None) -> Notify | None:
        with self._lock:
            self.counts[f"{http_status} {outcome}"] += 1
            self.remotes[remote or "?"] += 1
            return self._take(self.clock())

    def due(self) -> Notify | None:
        with self._lock:
            return self._take(self.clock()) if self.counts else None

    def _take(self, now: float) -> Notify | None:
        if now < self.next_at:
            return None
        total = sum(self.counts.values())
        what = ", ".join(f"{n} x {k}" for k, n in self.counts.most_common())
        where = ", ".join(r for r, _ in self.remotes.most_common(3)) + (" ..." if len(self.remotes) > 3 else "")
        self.counts.clear()
        self.remotes.clear()
        self.next_at = now + self.window_s
        return Notify(kind="refused", text=f"Refused {total} webhook/operator request(s) ({what}) from {where}")


WEBHOOK, OPERATOR = "webhook", "operator"


class IngressApp:
    """The WSGI application of one listener: the webhook surface (`POST /webhook[/<path_token>]`, `GET /health`)
    and/or the operator surface (everything else; operator credentials required).

    Both surfaces share the service port unless `[operator] port` gives the operator surface its own listener
    (then each listener's app serves one surface, and /health on both)."""

    def __init__(self, registry, config, *, operator_token: str = "", surfaces=(WEBHOOK, OPERATOR),
                 lockout: Lockout | None = None):
        self.registry = registry
        self.config = config
        self.surfaces = frozenset(surfaces)
        self.operator_token = operator_token or config.operator.token
        self.addresses = Addresses.from_config(config.service.trusted_proxies, config.webhook.allow_ips)
        self.lockout = lockout or Lockout()
        self._lockout_lock = threading.Lock()
        self.accepting = threading.Event()
        self.ready = threading.Event()
        self.redactor = Redactor.from_config(config, self.operator_token)
        self.refusals = RefusalDigest()
        self._refusal_timer: threading.Timer | None = None
        self._timer_lock = threading.Lock()
        self._risk_seen = "unknown"  # /health: the last risk state the risk actor answered
        # The dashboard (/ui/, part of the operator surface): its own WSGI app (Flask) with its own login, built
        # once, calling this app's operator functions.
        self.dashboard = None
        if OPERATOR in self.surfaces:
            from actors.dashboard.app import create_dashboard

            self.dashboard = create_dashboard(self, registry, config)

    # ---- WSGI plumbing --------------------------------------------------------------------------

    def __call__(self, environ, start_response):
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "/") or "/"
        if self.dashboard is not None and (path == "/" or path == "/ui" or path.startswith("/ui/")):
            return self.dashboard(environ, start_response)
        try:
            status, payload = self.route(method, path, environ)
        except Exception as exc:  # noqa: BLE001 - the listener must answer, and the failure must be visible
            # The frames, but not the exception's text unredacted: it may quote the request.
            logger.error("listener error on {} {}: {}\n{}", method, self.redactor.text(path),
                         self.redactor.text(f"{type(exc).__name__}: {exc}"),
                         "".join(traceback.format_tb(exc.__traceback__)))
            status, payload = 500, {"error": "internal error"}
        data = json.dumps(payload, default=str).encode()
        start_response(f"{status} {_REASONS.get(status, 'OK')}",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]

    def route(self, method: str, path: str, environ) -> tuple[int, Any]:
        path = "/" + path.strip("/")
        client = self.addresses.client(environ.get("REMOTE_ADDR"), environ.get("HTTP_X_FORWARDED_FOR"))
        environ["oms.client"] = client  # what every audit row of this request records
        if self._locked_out(client):
            self._record(RecordAlert(source=_source(path), outcome="locked_out", http_status=429, remote_addr=client,
                                     error=f"{method} {self._shown(path)}: too many failed authentications"))
            return 429, {"error": "too many failed authentications from this address; try again later"}
        if path == "/webhook" or path.startswith("/webhook/"):
            return self._webhook_surface(method, path, environ, client)
        if path == "/health" and method == "GET":
            return self.health()
        if OPERATOR not in self.surfaces:
            return 404, {"error": f"no route {method} {self._shown(path)}"}
        if not self._operator_ok(environ):
            self._failed_auth(client)
            self._record(RecordAlert(source="operator", outcome="unauthorized", http_status=401, remote_addr=client,
                                     error=f"{method} {self._shown(path)}: no operator credentials"))
            return 401, {"error": "unauthorized: the operator surface needs 'Authorization: Bearer <operator token>'"}
        if not self.ready.is_set():  # bound before the database and the broker: nothing else answers yet
            return 503, {"status": "starting", "error": "the service is starting; retry later",
                         "accepting": False}
        return self._operator_route(method, path, environ)

    def _webhook_surface(self, method: str, path: str, environ, client: str) -> tuple[int, Any]:
        if WEBHOOK not in self.surfaces:
            return 404, {"error": f"no route {method} {self._shown(path)}"}
        by_path = path != "/webhook"
        if by_path and not constant_equal(path.removeprefix("/webhook/"), self.config.webhook.path_token):
            # A wrong path token is an unknown path: nothing tells a scanner it was close.
            self._failed_auth(client)
            self._record(RecordAlert(outcome="unauthorized", http_status=404, remote_addr=client,
                                     error=f"{method} /webhook/***: wrong path token"))
            return 404, {"error": f"no route {method} /webhook/***"}
        if method != "POST":
            return 405, {"error": "use POST"}
        if not self.addresses.may_send_alerts(client):
            self._record(RecordAlert(outcome="forbidden", http_status=403, remote_addr=client,
                                     error=f"{client} is not in webhook.allow_ips"))
            return 403, {"error": "this address may not send alerts (webhook.allow_ips)"}
        return self.webhook(environ, by_path=by_path)

    def _operator_ok(self, environ) -> bool:
        """`Authorization: Bearer <operator token>`. Never answered without it: not from loopback, not behind a
        proxy, not with the webhook secret."""
        return constant_equal(bearer(environ.get("HTTP_AUTHORIZATION")), self.operator_token)

    def _locked_out(self, client: str) -> bool:
        if self.addresses.never_locked(client):
            return False
        with self._lockout_lock:
            return self.lockout.locked(client, time.monotonic())

    def _failed_auth(self, client: str) -> None:
        """One failed authentication; the tenth in five minutes locks the address out for fifteen (one
        notification). Never an address that carries the trader's own alerts (allow_ips, TradingView's)."""
        if self.addresses.never_locked(client):
            return
        with self._lockout_lock:
            locked = self.lockout.failed(client, time.monotonic())
        if locked:
            logger.bind(event="lockout", client=client).warning("{} locked out for 15 minutes after repeated "
                                                                "failed authentications", client)
            self.registry.tell("notifier", Notify(kind="refused", text=f"{client} locked out for 15 minutes: "
                                                                        f"10 failed authentications in 5 minutes"))

    def _shown(self, path: str) -> str:
        """A path as it may appear in an answer, an audit row or a log: never a path token or any secret."""
        if path.startswith("/webhook/"):
            return "/webhook/***"
        return self.redactor.text(path)

    def _operator_route(self, method: str, path: str, environ) -> tuple[int, Any]:
        if method == "GET":
            query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
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
        return 404, {"error": f"no route {method} {self._shown(path)}"}

    # ---- GET /health ----------------------------------------------------------------------------

    def health(self) -> tuple[int, dict]:
        """200 while orders can be sent ("degraded": something is wrong but they still go), else 503; the same
        body either way. Cheap and never waits on the broker: the session state is shared (SessionGate), the
        risk state an ask with a short timeout. Answered without credentials: no secret, no account detail."""
        gate = getattr(self.registry, "broker_session", None)
        session = gate.snapshot() if gate is not None else {"broker": "logged_in", "websocket": "off",
                                                             "reason": None}
        body = {"status": "ok", "broker": session["broker"], "websocket": session["websocket"],
                "risk": self._risk_state(), "reason": None, "accepting": self.accepting.is_set()}
        if session["broker"] != "logged_in":
            body["reason"] = session["reason"] or "no broker session"
        elif not self.ready.is_set():
            body["reason"] = "starting: recovery not finished"
        elif not body["accepting"]:
            body["reason"] = "not accepting alerts (stopping)"
        if body["reason"] is not None:
            body["status"] = "unavailable"
            return 503, body
        if session["websocket"] == "down":
            body["status"], body["reason"] = "degraded", "broker WebSocket down: polling the OrderBook instead"
        return 200, body

    def _risk_state(self) -> str:
        """ACTIVE / REDUCING / HALTED; the last known one (or "unknown") when the risk actor is busy."""
        try:
            self._risk_seen = self.registry.ask("risk", GetState(), timeout=HEALTH_ASK_S)["state"]
        except Exception:  # noqa: BLE001 - busy (a PositionBook read) or restarting: /health must answer anyway
            pass
        return self._risk_seen

    # ---- operator commands: exits on demand, cancel-all -----------------------------------------

    def _operator_body(self, environ, action: str) -> dict | tuple[int, dict]:
        """The JSON body of an operator command (the caller has been authenticated as the operator)."""
        remote = environ.get("oms.client") or environ.get("REMOTE_ADDR")
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > self.config.service.max_body_bytes:
            self._record(RecordAlert(source="manual", outcome="too_large", http_status=413, remote_addr=remote,
                                     error=f"{action}: body too large"))
            return 413, {"error": "body too large"}
        body = environ["wsgi.input"].read(length) if length > 0 else b""
        try:
            data = parse_json(body) if body.strip() else {}
        except BodyError as exc:
            self._record(RecordAlert(source="manual", outcome="invalid", http_status=400, remote_addr=remote,
                                     body=self.redactor.raw(body.decode("utf-8", "replace")),
                                     error=f"{action}: {exc}"))
            return 400, {"error": "the body must be a JSON object", "errors": [str(exc)]}
        if not isinstance(data, dict):
            self._record(RecordAlert(source="manual", outcome="invalid", http_status=400, remote_addr=remote,
                                     body=self.redactor.dumps(data), error=f"{action}: not a JSON object"))
            return 400, {"error": "the body must be a JSON object"}
        data = {str(k).strip().lower(): v for k, v in data.items()}
        data.pop("secret_key", None)  # authorizes nothing here (the operator token does); never stored
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
                                           body=self.redactor.dumps({k: v for k, v in data.items() if k != "_remote"}))
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
                                 body=self.redactor.dumps({k: v for k, v in data.items() if k != "_remote"}),
                                 error=f"cancel requested for {len(ids)} order(s): {' '.join(ids)}"[:2000]))
        return 202, {"cancel_requested": ids}

    # ---- POST /webhook --------------------------------------------------------------------------

    def webhook(self, environ, *, by_path: bool = False) -> tuple[int, Any]:
        received = time.monotonic()
        remote = environ.get("oms.client") or environ.get("REMOTE_ADDR")
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
        # waitress hands over exactly the body (Content-Length or chunked); one byte more tells "too large"
        body = environ["wsgi.input"].read(limit + 1)
        if len(body) > limit:
            self._record(RecordAlert(outcome="too_large", http_status=413, remote_addr=remote,
                                     error=f"body over the {limit} byte limit"))
            return 413, {"error": f"body over the {limit} byte limit"}
        signed = None
        if environ.get("HTTP_X_SIGNATURE") and not by_path:
            signed = self._check_signature(environ, body)
            if isinstance(signed, tuple):
                return signed
        result = parse_webhook(body, secret, self.redactor, authenticated=by_path or signed is True)
        if result.status == 401:
            self._failed_auth(remote)
        if result.alert is None:
            self._record(RecordAlert(outcome=result.outcome, http_status=result.status, remote_addr=remote,
                                     body=result.stored_body, error="; ".join(result.errors)[:2000]))
            return result.status, result.body
        alert = result.alert
        if len(alert.legs) > self.config.service.max_legs:
            error = f"legs: at most {self.config.service.max_legs} legs per alert"
            self._record(RecordAlert(outcome="invalid", http_status=400, remote_addr=remote, body=result.stored_body,
                                     alert_id=alert.alert_id, strategy_name=alert.strategy_name, error=error))
            return 400, {"error": "wrong shape", "errors": [error]}
        return self.register(alert, source="webhook", remote=remote, body=result.stored_body, received_mono=received)

    def _check_signature(self, environ, body: bytes) -> bool | tuple[int, dict]:
        """`X-Signature` = hex HMAC-SHA256(secret, X-Timestamp + "\\n" + path + "\\n" + body), X-Timestamp within
        +/-5 minutes, each signature usable once (the memory is in the database: a replay after a restart is
        refused too). True, or the refusal (audited, counted against the address)."""
        remote = environ.get("oms.client") or environ.get("REMOTE_ADDR")
        path = environ.get("PATH_INFO") or "/webhook"
        signature = environ.get("HTTP_X_SIGNATURE") or ""
        why = check_signature(self.config.webhook.secret_key, signature, environ.get("HTTP_X_TIMESTAMP"), path, body,
                              time.time())
        if why is None:
            try:
                forget = datetime.now(timezone.utc) - timedelta(seconds=SIGNATURE_MEMORY_S)
                fresh = self.registry.ask("store", ClaimSignature(
                    key=signature_key(signature), forget_before=forget.isoformat(timespec="microseconds")),
                    timeout=REGISTER_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - a replay cannot be ruled out: refuse, the sender retries
                logger.error("signature memory unavailable ({!r}); answering 503", exc)
                return 503, {"error": "could not check the signature now; retry later"}
            if fresh:
                return True
            why = "signature already used (a replay)"
        self._failed_auth(remote)
        self._record(RecordAlert(outcome="unauthorized", http_status=401, remote_addr=remote,
                                 body=self.redactor.raw(body.decode("utf-8", "replace")), error=f"X-Signature: {why}"))
        return 401, {"error": f"unauthorized: {why}"}

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
            # The commit may still land: then the store announces its legs to the blockers as for any alert (the
            # retry with the same alert_id is answered 200 with that first answer).
            logger.error("alert {}: registration did not complete in {}s; answering 503", alert_id,
                         REGISTER_TIMEOUT_S)
            return 503, {"error": "could not register the alert in time; retry with the same alert_id",
                         "alert_id": alert_id}
        except Exception as exc:  # noqa: BLE001 - a dead store: say so, never pretend
            logger.error("alert {}: registration failed: {!r}", alert_id, exc)
            return 503, {"error": "could not register the alert; retry with the same alert_id",
                         "alert_id": alert_id}
        self._dispatch(result, alert_id, alert)
        return result.http_status, result.response

    def _dispatch(self, result: RegisterResult, alert_id: str, alert: WebhookAlert) -> None:
        """Tell the trader about a freshly registered alert (the store has already announced its CREATED legs to
        the blockers: one way into the pipeline for every source)."""
        if result.duplicate:
            return
        if result.note:
            logger.bind(event="alert_id_reused", alert_id=alert_id).warning("alert {}: {}", alert_id, result.note)
            self.registry.tell("notifier", Notify(
                kind="alert", text=f"Alert {alert_id} ({alert.strategy_name} {alert.execution_type}): the "
                                   f"alert_id was used before for different content; traded as a new alert. Make "
                                   f"alert_ids unique (see README)."))
        self.registry.tell("notifier", Notify(
            kind="alert", text=f"Alert {alert_id} {alert.strategy_name} {alert.execution_type}: "
                               f"{len(result.orders)} leg(s)"))

    def _record(self, msg: RecordAlert) -> None:
        """Audit a request that registered nothing; refusals are also notified (rate-limited)."""
        r = self.redactor  # every field once more: nothing of a secret may reach the table or the log line
        msg = msg.model_copy(update={"body": r.text(msg.body), "error": r.text(msg.error),
                                     "alert_id": r.text(msg.alert_id), "strategy_name": r.text(msg.strategy_name)})
        self.registry.tell("store", msg)
        if msg.http_status in (400, 401, 413):
            self._notify(self.refusals.add(msg.http_status, msg.outcome, msg.remote_addr))

    def _notify(self, note: Notify | None) -> None:
        if note is not None:
            self.registry.tell("notifier", note)
        with self._timer_lock:  # the summary of what the window holds goes out when the window ends
            if self._refusal_timer is None or not self._refusal_timer.is_alive():
                delay = self.refusals.next_at - self.refusals.clock()
                if note is None and delay > 0:
                    self._refusal_timer = threading.Timer(delay + 0.05, self._refusal_summary)
                    self._refusal_timer.daemon = True
                    self._refusal_timer.start()

    def _refusal_summary(self) -> None:
        with self._timer_lock:
            self._refusal_timer = None
        self._notify(self.refusals.due())

    def close(self) -> None:
        with self._timer_lock:
            if self._refusal_timer is not None:
                self._refusal_timer.cancel()
                self._refusal_timer = None


_REASONS = {200: "OK", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 413: "Payload Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}


class ListenerBindError(Exception):
    """The listener cannot bind its address; the message is one line naming host:port and the config key."""


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit where allowed; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            logger.warning("cannot raise the open-file limit from {} to {}: {}", soft, target, exc)
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def connection_limit(fd_limit: int) -> int:
    """Connections the listener holds at once: well under the descriptor limit, which must also cover the
    database, log files, broker sockets and the embedded paper exchange (half of what is left after 256)."""
    if fd_limit == resource.RLIM_INFINITY or fd_limit <= 0:
        fd_limit = 65536
    return max(32, min(4096, (fd_limit - 256) // 2))


LISTENER_CHANNEL_TIMEOUT_S = 15  # an idle connection (no request in progress) is closed after this
LISTENER_CLEANUP_INTERVAL_S = 2  # how often idle connections are looked for


def create_listener(app, config, port: int, host: str | None = None):
    """Bind the waitress server (not yet serving). poll() instead of select(): no descriptor number a client
    can reach stops the loop; connections capped below RLIMIT_NOFILE; idle ones closed after a few seconds."""
    from waitress.server import create_server

    host = host or config.service.host
    limit = connection_limit(raise_fd_limit())
    try:
        server = create_server(
            app, host=host, port=port,
            threads=config.service.listener_threads,
            # Well above our own limit so oversized alerts reach the app and are audited as too_large;
            # only absurd bodies are refused by the server itself.
            max_request_body_size=max(16 * 1024 * 1024, config.service.max_body_bytes * 16),
            asyncore_use_poll=True, connection_limit=limit,
            channel_timeout=LISTENER_CHANNEL_TIMEOUT_S, cleanup_interval=LISTENER_CLEANUP_INTERVAL_S,
            # X-Forwarded-For reaches the app, which believes it only from `[service] trusted_proxies`
            # (actors/access.py Addresses.client).
            clear_untrusted_proxy_headers=False, ident="shoonya-oms",
        )
    except OSError as exc:
        raise ListenerBindError(f"cannot listen on {host}:{port} (config service.host / service.port): "
                                f"{exc.strerror or exc}") from None
    logger.debug("listener: connection limit {} (open-file limit {})", limit,
                 resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    return server


class IngressActor(SupervisedActor):
    """Owns the waitress listener; the request threads use IngressApp.

    The serving thread watches its own loop: if it ends (or the server closes) without on_stop asking for it,
    `on_death(reason)` is called — the System then logs, notifies and makes `oms run` exit non-zero, so a
    process supervisor restarts a service that could no longer hear alerts."""

    registry_name = "ingress"
    HANDLERS = {
        GetPort: "_on_port",
        Accept: "_on_accept",
        Refuse: "_on_refuse",
    }

    def __init__(self, registry, config, *, app: IngressApp | None = None, port: int | None = None,
                 server=None, on_death: Callable[[str], None] | None = None, host: str | None = None):
        super().__init__(registry)
        self.app = app or IngressApp(registry, config)
        self.config = config
        self.host = host or config.service.host
        self.port = config.service.port if port is None else port
        self.server = server  # already bound by the System at start; a restarted actor binds again
        self.on_death = on_death
        self.thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._died = threading.Event()

    def on_start(self):
        if self.server is None:
            self.server = create_listener(self.app, self.config, self.port, self.host)
        self.port = int(self.server.effective_port)  # waitress gives the numeric service name (a str)
        server, actor = self.server, self
        original_close = server.close

        def close():  # the listening socket closed from inside waitress (a dispatcher error) is a death too
            try:
                original_close()
            finally:
                if not actor._closing.is_set():
                    actor._listener_died("the listening socket was closed")

        server.close = close
        if self.app.ready.is_set():  # a restarted listener after start-up takes alerts again
            self.app.accepting.set()
        self.thread = threading.Thread(target=self._serve, name=f"{self.registry_name}-listener", daemon=True)
        self.thread.start()
        logger.info("{} listener on http://{}:{} ({})", self.registry_name, self.host, self.port,
                    " + ".join(sorted(self.app.surfaces)))

    def _serve(self):
        reason = "the listener loop ended"
        try:
            self.server.run()
        except BaseException as exc:  # noqa: BLE001 - whatever ends the loop, it must not end silently
            reason = f"the listener loop failed: {type(exc).__name__}: {exc}"
        if not self._closing.is_set():
            self._listener_died(reason)

    def _listener_died(self, reason: str) -> None:
        if self._died.is_set():
            return
        self._died.set()
        self.app.accepting.clear()
        if self.on_death is not None:
            self.on_death(reason)
        else:
            logger.critical("webhook listener on port {} stopped: {}", self.port, reason)

    def _on_port(self, message: GetPort) -> int:
        return self.port

    def _on_accept(self, message: Accept) -> bool:
        self.app.ready.set()
        self.app.accepting.set()
        return True

    def _on_refuse(self, message: Refuse) -> bool:
        self.app.accepting.clear()
        return True

    def on_stop(self):
        self._closing.set()
        self.app.accepting.clear()
        self.app.close()
        if self.server is not None:
            try:
                self.server.close()
            except (OSError, ValueError):  # already closed
                pass
        if self.thread is not None:
            self.thread.join(timeout=5)


def _source(path: str) -> str:
    return "webhook" if path == "/webhook" or path.startswith("/webhook/") else "operator"


class OperatorIngressActor(IngressActor):
    """The operator surface on its own listener (`[operator] host/port`): the same app code, one surface."""

    registry_name = "operator"
