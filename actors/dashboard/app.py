"""The dashboard under /ui/: a Flask WSGI app served by the service's own waitress listener (IngressApp mounts it).

Flask + Jinja2 because the templates escape every value by default (an order's tag or symbol is text from a
broker or a webhook sender) and the session cookie is signed (itsdangerous); no hand-rolled HTML or crypto.

Security: one operator, logged in with `[operator] password` (actors.access.password_ok); login attempts throttled
per address (actors.access.Lockout); the session cookie is HttpOnly, SameSite=Strict, Secure over HTTPS, signed
with a key kept in `<data_dir>/dashboard_secret` (0600) and ends after SESSION_TTL_S; every form carries a CSRF
token that every POST must return; a strict Content-Security-Policy (no inline script: the one script is
static/app.js). Every action goes through the same functions as the JSON operator API (IngressApp.request_exits,
request_cancels, register; RiskActor's messages), recorded with source "dashboard".
"""

from __future__ import annotations

import json
import os
import re
import secrets
import threading
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from flask import Flask, abort, flash, jsonify, redirect, render_template, request, session, url_for
from markupsafe import Markup
from flask.sessions import SecureCookieSessionInterface
from loguru import logger
from pydantic import ValidationError

from actors.access import Lockout, constant_equal, password_ok
from actors.dashboard import reads
from actors.dashboard.words import ist, money, plain_tag
from actors.pnl_series import svg as pnl_svg
from actors.risk_rules import IST
from messages.alerts import WebhookAlert
from messages.broker import IsLoggedIn, IsWsConnected
from messages.commands import GetState, RecordAlert
from messages.risk import GetPnlSeries
from messages.watcher import GetWatcherStatus
from storage import queries
from storage import transitions as T

HERE = Path(__file__).parent
SECRET_FILE = "dashboard_secret"
SESSION_TTL_S = 12 * 3600
PAGE_SIZE = 100
LIVE_LIMIT = 500  # rows per live poll; the rest come on the next poll
FORM_LEGS = 4
RISK_ACTIONS = {"halt": "Halt: block every new entry (exits go on)",
                "reduce": "Reduce: exits only, entries blocked",
                "resume": "Resume: allow entries again",
                "flatten": "Flatten: cancel our open orders and exit every non-CNC position (entries then stay "
                           "blocked: REDUCING)"}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
_IDEM = re.compile(r"^[A-Za-z0-9]{16,64}$")


def load_secret(data_dir: Path) -> str:
    """The session-signing key: generated once into <data_dir>/dashboard_secret (0600), then reused, so a restart
    keeps the operator logged in. An unreadable or short file is replaced (sessions signed with it end)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / SECRET_FILE
    try:
        secret = path.read_text(encoding="ascii").strip()
        if len(secret) >= 32:
            return secret
    except (OSError, UnicodeDecodeError):
        pass
    secret = secrets.token_urlsafe(48)
    temp = path.with_suffix(".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(secret + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(temp, 0o600)
    os.replace(temp, path)
    return secret


class _Sessions(SecureCookieSessionInterface):
    def get_cookie_secure(self, app) -> bool:
        # Secure whenever this request came over HTTPS (wsgi.url_scheme; behind a trusted proxy later).
        return request.scheme == "https"


def session_fresh(data, now: float) -> str:
    """'ok', 'expired' or 'none' for a session's contents."""
    if data.get("user") != "operator":
        return "none"
    started = data.get("t")
    if not isinstance(started, (int, float)) or not 0 <= now - started <= SESSION_TTL_S:
        return "expired"
    return "ok"


def operator_session_ok(dashboard: Flask, environ) -> bool:
    """Whether a request carries a live dashboard session (for the operator surface's authentication)."""
    with dashboard.request_context(environ):
        data = dashboard.session_interface.open_session(dashboard, request)
        return data is not None and session_fresh(data, time.time()) == "ok"


def day_bounds(text: str | None) -> tuple[str | None, str | None]:
    """An IST date YYYY-MM-DD as [from, to) in UTC ISO-8601; (None, None) when absent; ValueError when wrong."""
    if not text:
        return None, None
    day = date.fromisoformat(text)
    start = datetime.combine(day, datetime.min.time(), IST)
    as_utc = lambda d: d.astimezone(UTC).isoformat(timespec="microseconds")  # noqa: E731
    return as_utc(start), as_utc(start + timedelta(days=1))


def order_view(o: dict, status_filter: str | None = None) -> dict:
    """What the orders table shows of a row (also the JSON the live poll sends)."""
    return {"id": o["id"], "command_id": o["command_id"], "created": ist(o["created_at"], "%m-%d %H:%M:%S"),
            "strategy": o["strategy_name"], "symbol": o["symbol"], "exchange": o["exchange"],
            "kind": o["execution_type"], "side": o["side"], "filled": f"{o['filled_qty']}/{o['quantity']}",
            "avg_price": money(o["avg_price"]) if o["avg_price"] else "", "status": o["status"],
            "broker_status": o["broker_status"] or "-", "tag": o["tag"] or "",
            "why": plain_tag(o["tag"]) if o["status"] == T.FAILED else "",
            "updated": ist(o["updated_at"], "%H:%M:%S"),
            "matches": not status_filter or o["status"] == status_filter}


COUNTS_TTL_S = 1.0  # open tabs share the counts by status for this long (each poll would scan the day's orders)
_counts_cache: dict[tuple, tuple[float, dict]] = {}
_counts_lock = threading.Lock()


def live_counts(*filters) -> dict[str, int]:
    """Counts by status for the live poll, computed at most once a second per filter, whatever the tabs."""
    now = time.monotonic()
    with _counts_lock:
        hit = _counts_cache.get(filters)
        if hit is not None and now - hit[0] < COUNTS_TTL_S:
            return hit[1]
    counts = queries.filtered_counts_by_status(*filters)
    with _counts_lock:
        if len(_counts_cache) > 64:
            _counts_cache.clear()
        _counts_cache[filters] = (now, counts)
    return counts


def create_dashboard(ingress, registry, config) -> Flask:
    app = Flask("actors.dashboard", root_path=str(HERE), static_folder="static", static_url_path="/ui/static",
                template_folder="templates")
    app.secret_key = load_secret(Path(config.service.data_dir))
    app.config.update(SESSION_COOKIE_NAME="oms_session", SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Strict", PERMANENT_SESSION_LIFETIME=timedelta(seconds=SESSION_TTL_S),
                      MAX_CONTENT_LENGTH=config.service.max_body_bytes, SEND_FILE_MAX_AGE_DEFAULT=300)
    app.session_interface = _Sessions()
    app.jinja_env.filters.update(ist=ist, money=money, plain_tag=plain_tag)
    # Compile every template now, at start: a first page view must not hold the GIL for the compilation while
    # orders flow.
    for name in app.jinja_env.list_templates():
        app.jinja_env.get_template(name)
    app.jinja_env.globals.update(RISK_ACTIONS=RISK_ACTIONS, STATUSES=T.STATUSES)
    lockout, lockout_lock = Lockout(), threading.Lock()

    def client() -> str:
        # The listener's rule: X-Forwarded-For only from a trusted proxy (actors/access.py).
        return ingress.addresses.client(request.remote_addr, request.headers.get("X-Forwarded-For")) or ""

    def audit_refusal(status: int, outcome: str, why: str) -> None:
        """A refused dashboard login is audited like every refusal of the operator surface (an alerts row)."""
        ingress._record(RecordAlert(source="operator", outcome=outcome, http_status=status, remote_addr=client(),
                                    error=f"dashboard login: {why}"))

    def csrf_token() -> str:
        if "csrf" not in session:
            session["csrf"] = secrets.token_urlsafe(32)
        return session["csrf"]

    app.jinja_env.globals["csrf_token"] = csrf_token

    def safe_next(target: str | None) -> str:
        # Only a path of this dashboard: never an open redirect to another host.
        if (target and target.startswith("/ui/") and not target.startswith(("//", "/ui/login"))
                and "\\" not in target):
            return target
        return url_for("orders")

    @app.before_request
    def guard():
        if request.endpoint == "static":
            return None
        if request.method == "POST":
            given = request.form.get("csrf")
            if not constant_equal(given, session.get("csrf")):
                logger.warning("dashboard: {} {} from {} refused: missing or wrong CSRF token", request.method,
                               request.path, client())
                return render_template("message.html", title="Refused",
                                       text="The form's security token is missing or stale: nothing was done. "
                                            "Reload the page and try again."), 400
        if request.endpoint in ("login", "root"):
            return None
        state = session_fresh(session, time.time())
        if state == "ok":
            return None
        if state == "expired":
            session.clear()
            flash("Your session expired: log in again.")
        if request.path.startswith("/ui/api/"):
            return jsonify(error="login required"), 401
        return redirect(url_for("login", next=request.full_path if request.method == "GET" else None))

    @app.after_request
    def headers(response):
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        if request.endpoint != "static":
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.route("/")
    @app.route("/ui")
    def root():
        return redirect(url_for("orders"))

    # ---- login -----------------------------------------------------------------------------------------

    @app.route("/ui/login", methods=["GET", "POST"])
    def login():
        configured = config.operator.password
        unset = None if configured else ("The dashboard has no password yet, so every login is refused. Set "
                                         "[operator] password in config.toml (or the OMS_OPERATOR_PASSWORD "
                                         "environment variable) and restart oms.")
        target = request.values.get("next")
        if request.method == "GET":
            return render_template("login.html", unset=unset, next=target)
        if unset:
            return render_template("login.html", unset=unset, next=target), 403
        now = time.monotonic()
        with lockout_lock:
            locked = lockout.locked(client(), now)
        if locked:
            audit_refusal(429, "locked_out", "too many failed logins")
            return render_template("login.html", error="Too many failed logins from this address: try again in "
                                                       "15 minutes.", next=target), 429
        if password_ok(request.form.get("password"), configured):
            session.clear()
            session.permanent = True
            session.update(user="operator", t=time.time(), csrf=secrets.token_urlsafe(32))
            logger.info("dashboard: operator logged in from {}", client())
            return redirect(safe_next(target))
        with lockout_lock:
            now_locked = lockout.failed(client(), now)
        logger.warning("dashboard: failed login from {}{}", client(),
                       "; address locked out for 15 minutes" if now_locked else "")
        audit_refusal(401, "unauthorized", "wrong password")
        return render_template("login.html", error="Wrong password.", next=target), 401

    @app.route("/ui/logout", methods=["POST"])
    def logout():
        session.clear()
        flash("Logged out.")
        return redirect(url_for("login"))

    # ---- orders ----------------------------------------------------------------------------------------

    def order_filters() -> dict:
        args = request.args
        status = (args.get("status") or "").strip().upper() or None
        if status and status not in T.STATUSES:
            flash(f"Unknown status {status!r} ignored.")
            status = None
        try:
            created_from, created_to = day_bounds((args.get("day") or "").strip() or None)
            day = (args.get("day") or "").strip() or None
        except ValueError:
            flash("The day must be a date YYYY-MM-DD (IST); ignored.")
            created_from = created_to = day = None
        return {"status": status, "strategy": (args.get("strategy") or "").strip() or None,
                "symbol": (args.get("symbol") or "").strip().upper() or None, "day": day,
                "created_from": created_from, "created_to": created_to}

    @app.route("/ui/")
    def orders():
        f = order_filters()
        try:
            before = int(request.args["before"]) if request.args.get("before") else None
        except ValueError:
            before = None
        rows = queries.orders_page(f["status"], f["strategy"], f["symbol"], f["created_from"], f["created_to"],
                                   before, PAGE_SIZE + 1)
        more = len(rows) > PAGE_SIZE
        rows = rows[:PAGE_SIZE]
        counts = queries.filtered_counts_by_status(f["strategy"], f["symbol"], f["created_from"], f["created_to"])
        keep = {k: f[k] for k in ("status", "strategy", "symbol", "day") if f[k]}
        return render_template("orders.html", rows=[order_view(o, f["status"]) for o in rows], counts=counts,
                               filters=keep, since=queries.latest_order_update(), first_page=before is None,
                               next_before=rows[-1]["id"] if more and rows else None)

    @app.route("/ui/api/orders")
    def orders_changed():
        f = order_filters()
        since = request.args.get("since") or ""
        rows = queries.orders_changed_since(since, f["strategy"], f["symbol"], f["created_from"], f["created_to"],
                                            limit=LIVE_LIMIT + 1)
        if len(rows) > LIVE_LIMIT:
            # Cut before the last timestamp: rows sharing it beyond the limit must not be skipped next time.
            rows = rows[:LIVE_LIMIT]
            rows = [r for r in rows if r["updated_at"] != rows[-1]["updated_at"]] or rows
        return jsonify(rows=[order_view(o, f["status"]) for o in rows],
                       since=max([since] + [o["updated_at"] for o in rows]),
                       counts=live_counts(f["strategy"], f["symbol"], f["created_from"], f["created_to"]))

    @app.route("/ui/orders/<command_id>")
    def order(command_id: str):
        found = queries.get_order(command_id)
        if found is None:
            abort(404)
        events = found.pop("events")
        sent = [e for e in events if e["to_status"] == T.SENT_TO_BROKER]
        fills = [e for e in events if e["to_status"] in (T.PARTIAL, T.EXECUTED)]
        return render_template("order.html", o=found, events=events, sent=sent, fills=fills,
                               why=plain_tag(found["tag"]) if found["status"] == T.FAILED else "",
                               alert=queries.alert_of(found.get("alert_key") or ""),
                               can_cancel=found["status"] in T.OPEN_AT_BROKER)

    # ---- positions, exits, cancels ----------------------------------------------------------------------

    @app.route("/ui/positions")
    def positions():
        prices = reads.market(registry)
        open_orders = [o for status in (T.SENT_TO_BROKER, T.PARTIAL) for o in queries.list_orders(status, limit=500)]
        return render_template("positions.html", positions=reads.position_rows(prices),
                               strategies=reads.strategy_rows(prices), prices_at=prices.at,
                               open_orders=[order_view(o) for o in open_orders])

    def confirm(title: str, text: str, action: str, back: str):
        fields = {k: v for k, v in request.form.items() if k not in ("csrf", "confirm")}
        return render_template("confirm.html", title=title, text=text, action=action, fields=fields, back=back)

    @app.route("/ui/positions/exit", methods=["POST"])
    def exit_positions():
        form = request.form
        scope = form.get("scope")
        if scope == "position":
            data = {"strategy": form.get("strategy"), "symbol": form.get("symbol"), "exchange": form.get("exchange")}
            what = f"{data['strategy']}'s {data['exchange']} {data['symbol']} position"
        elif scope == "strategy":
            data = {"strategy": form.get("strategy")}
            what = f"every position of {data['strategy']}"
        elif scope == "all":
            data, what = {}, "every strategy position"
        else:
            abort(400)
        if any(not isinstance(v, str) or not v.strip() for v in data.values()):
            abort(400)
        if form.get("confirm") != "yes":
            return confirm("Exit", f"Exit {what} with MARKET orders now?", url_for("exit_positions"),
                           url_for("positions"))
        status, body = ingress.request_exits(data, source="dashboard", remote=client())
        logger.bind(event="dashboard").warning("dashboard: exit of {} requested from {}: HTTP {}", what, client(),
                                               status)
        if status == 202:
            flash(f"Exit registered: {len(body['orders'])} order(s) for {what}.")
        else:
            flash(f"Nothing exited ({status}): {body.get('error', body)}")
        return redirect(url_for("positions"))

    @app.route("/ui/orders/cancel", methods=["POST"])
    def cancel_orders():
        command_id = (request.form.get("command_id") or "").strip()
        what = f"order {command_id}" if command_id else "every open order of ours"
        if request.form.get("confirm") != "yes":
            return confirm("Cancel", f"Cancel {what} at the broker?", url_for("cancel_orders"),
                           url_for("positions"))
        status, body = ingress.request_cancels({"command_id": command_id} if command_id else {},
                                               source="dashboard", remote=client())
        logger.bind(event="dashboard").warning("dashboard: cancel of {} requested from {}", what, client())
        ids = body.get("cancel_requested", []) if status == 202 else []
        flash(f"Cancel requested for {len(ids)} order(s)." if ids else f"Nothing to cancel: {what} is not open.")
        return redirect(request.form.get("back") if request.form.get("back", "").startswith("/ui/")
                        else url_for("positions"))

    # ---- risk ------------------------------------------------------------------------------------------

    @app.route("/ui/risk")
    def risk():
        chart = Markup("")
        try:
            view, error = registry.ask("risk", GetState(), timeout=5), None
            series = registry.ask("risk", GetPnlSeries(), timeout=5)
            chart = Markup(pnl_svg(series["points"]))  # built from numbers only (actors/pnl_series.py)
        except Exception as exc:  # noqa: BLE001 - show the page and say the engine did not answer
            view, error = None, f"the risk engine did not answer ({type(exc).__name__})"
        return render_template("risk.html", view=view, error=error, chart=chart)

    @app.route("/ui/risk/<action>", methods=["POST"])
    def risk_action(action: str):
        from actors.operator_requests import risk_request

        if action not in RISK_ACTIONS:
            abort(404)
        if request.form.get("confirm") != "yes":
            return confirm(action.capitalize(), RISK_ACTIONS[action] + "?", url_for("risk_action", action=action),
                           url_for("risk"))
        message = risk_request(f"/risk/{action}", {})
        view = registry.ask("risk", message, timeout=15)
        logger.bind(event="dashboard").warning("dashboard: risk {} from {}: state {}", action, client(),
                                               view.get("state"))
        flash(f"{action.capitalize()}: trading state {view.get('state')}"
              + (f" ({view['reason']})" if view.get("reason") else ""))
        if action == "resume" and view.get("state") != "ACTIVE":
            flash(f"Entries stay blocked: {view.get('reason')}")
        return redirect(url_for("risk"))

    # ---- diagnostics ------------------------------------------------------------------------------------

    def ask(name: str, message, timeout: float = 1.0):
        try:
            return registry.ask(name, message, timeout=timeout)
        except Exception:  # noqa: BLE001 - shown as unknown
            return None

    @app.route("/ui/diagnostics")
    def diagnostics():
        watcher = ask("watcher", GetWatcherStatus()) or {}
        broker = {"logged_in": ask("broker", IsLoggedIn()), "websocket_connected": ask("broker", IsWsConnected()),
                  "watcher_websocket": watcher.get("ws"), "last_poll_ok": watcher.get("last_poll_ok"),
                  "accepting_alerts": ingress.accepting.is_set()}
        return render_template("diagnostics.html", counts=queries.counts_by_status(),
                               stuck=[order_view(o) for o in queries.stuck_orders(config.service.stuck_after_s)],
                               doubt=[order_view(o) for o in queries.orders_in_doubt()],
                               external=queries.external_orders(), one_legged=queries.one_legged_alerts(),
                               broker=broker, stuck_after=config.service.stuck_after_s)

    # ---- a manual order ---------------------------------------------------------------------------------

    def blank_form() -> dict:
        return {"idem": uuid.uuid4().hex, "strategy_name": "", "execution_type": "ENTRY", "exchange": "NFO",
                "legs": [{"symbol": "", "direction": "BUY", "qty": "", "order_type": "MARKET", "price": "",
                          "trigger_price": "", "product": "NRML"} for _ in range(FORM_LEGS)]}

    @app.route("/ui/new", methods=["GET", "POST"])
    def new_order():
        if request.method == "GET":
            return render_template("new.html", form=blank_form(), errors=[])
        form = request.form
        values = {"idem": form.get("idem", ""), "strategy_name": form.get("strategy_name", "").strip(),
                  "execution_type": form.get("execution_type", ""), "exchange": form.get("exchange", "").strip(),
                  "legs": [{key: form.get(f"leg{i}_{key}", "").strip()
                            for key in ("symbol", "direction", "qty", "order_type", "price", "trigger_price",
                                        "product")} for i in range(FORM_LEGS)]}
        errors = []
        if not _IDEM.match(values["idem"]):
            errors.append("the form's idempotency key is missing: reload the form")
        legs = [{"tradingsymbol": leg["symbol"].upper(), "direction": leg["direction"], "qty": leg["qty"] or None,
                 "order_type": leg["order_type"], "price": leg["price"] or None,
                 "trigger_price": leg["trigger_price"] or None, "product_type": leg["product"]}
                for leg in values["legs"] if leg["symbol"]]
        data = {"alert_id": f"dashboard-{values['idem']}", "strategy_name": values["strategy_name"],
                "execution_type": values["execution_type"], "exchange": values["exchange"].upper() or None,
                "legs": legs}
        alert = None
        if not legs:
            errors.append("legs: give at least one leg (a trading symbol)")
        elif not errors:
            try:
                alert = WebhookAlert.model_validate(data)
            except ValidationError as exc:
                from actors.ingress import format_validation_errors

                errors += format_validation_errors(exc)
        if errors or alert is None:
            return render_template("new.html", form=values, errors=errors), 400
        status, body = ingress.register(alert, source="dashboard", remote=client(), body=json.dumps(data))
        logger.bind(event="dashboard").info("dashboard: manual {} {} from {}: HTTP {}", alert.strategy_name,
                                            alert.execution_type, client(), status)
        if status not in (200, 202):
            return render_template("new.html", form=values, errors=[body.get("error", str(body))]), status
        note = ("This form was already submitted: nothing new was traded." if status == 200
                else f"Registered {len(body['orders'])} leg(s).")
        return render_template("new_done.html", note=note, orders=body["orders"], alert_id=body.get("alert_id"))

    @app.errorhandler(404)
    def not_found(_):
        return render_template("message.html", title="Not found", text="No such page or order."), 404

    @app.errorhandler(400)
    def bad_request(_):
        return render_template("message.html", title="Bad request", text="The request was not understood: "
                                                                         "nothing was done."), 400

    @app.errorhandler(500)
    def failed(_):
        return render_template("message.html", title="Error", text="Internal error: see the service log."), 500

    return app
