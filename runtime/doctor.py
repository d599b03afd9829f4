"""`oms doctor`: is this set-up ready to trade? One line per check (✓ ok, ⚠ warning, ✗ problem).

Checks: the config loads; the secrets the mode needs are there; the TOTP seed yields a code; the clock agrees
with the broker's `request_time`; the broker login and the WebSocket work; the ports are free; the data dir is
writable; the database passes `PRAGMA integrity_check`; there is disk space.

While `oms run` holds its instance lock, doctor asks the running service (`GET /health`) instead of logging in:
a second login may end the running session. Its ports are then in use by it, which is not a problem.
No secret value is ever part of a line (names of keys and variables only; a last pass redacts any value that
slipped into a broker's or library's message).
"""

from __future__ import annotations

import shutil
import socket
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from runtime.config import SAMPLE_SECRETS, SECRET_ENV, Config, ConfigError, load_config

OK, WARN, FAIL = "ok", "warn", "fail"
SYMBOLS = {OK: "✓", WARN: "⚠", FAIL: "✗"}
ASCII_SYMBOLS = {OK: "[ok]", WARN: "[warn]", FAIL: "[FAIL]"}
IST = timezone(timedelta(hours=5, minutes=30))
MAX_CLOCK_SKEW_S = 30.0
MIN_FREE_BYTES = 1_000_000_000
WS_TIMEOUT_S = 10.0
HEALTH_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Check:
    status: str  # OK, WARN or FAIL
    name: str
    detail: str


def format_check(check: Check, stream=None) -> str:
    symbol = SYMBOLS[check.status]
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        symbol.encode(encoding)
    except (UnicodeEncodeError, LookupError):  # a terminal that cannot show ✓ still gets a readable line
        symbol = ASCII_SYMBOLS[check.status]
    return f"{symbol} {check.name}: {check.detail}"


# ---- the pieces (plain functions, tested directly) -----------------------------------------------------

def _env_name(section: str, key: str) -> str:
    for name, where in SECRET_ENV.items():
        if where == (section, key):
            return name
    return ""


def _missing(section: str, keys: list[str], values: dict) -> list[str]:
    out = []
    for key in keys:
        if not str(values.get(key) or "").strip():
            env = _env_name(section, key)
            out.append(f"{section}.{key}" + (f" ({env})" if env else ""))
    return out


def check_secrets(config: Config) -> list[Check]:
    """The webhook secret, and the broker credentials the mode and auth need (names only, never values)."""
    checks = []
    secret = config.webhook.secret_key.strip()
    live = config.broker.mode == "shoonya"
    if not secret or secret in SAMPLE_SECRETS:
        what = "empty" if not secret else "the sample value of config.toml"
        if live:
            checks.append(Check(FAIL, "webhook secret", f"{what}: set webhook.secret_key (or OMS_WEBHOOK_SECRET) "
                                                        f"to a long random value; live mode refuses to start"))
        else:
            checks.append(Check(WARN, "webhook secret", f"{what} (fine on paper; live mode refuses it)"))
    elif len(secret) < 16:
        checks.append(Check(WARN, "webhook secret", f"set, but short ({len(secret)} characters): use 32 or more"))
    else:
        checks.append(Check(OK, "webhook secret", "set"))
    b = config.broker
    if not live:
        checks.append(Check(OK, "broker credentials", "paper mode: none needed"))
        return checks
    values = b.model_dump()
    if b.auth == "oauth":
        missing = _missing("broker", ["user_id", "oauth_client_id", "auth_code", "api_secret"], values)
    else:
        missing = _missing("broker", ["user_id", "password", "totp_secret", "vendor_code", "api_secret"], values)
    if missing:
        checks.append(Check(FAIL, "broker credentials", f"{b.auth}: missing " + ", ".join(missing)))
    else:
        checks.append(Check(OK, "broker credentials", f"{b.auth}: all present for {b.user_id}"))
    return checks


def check_totp(config: Config) -> Check | None:
    """The TOTP seed decodes and yields a code (None: no seed and none needed)."""
    from runtime.noren.rest import _totp_now  # the login's own decoding: what works here works there

    seed = config.broker.totp_secret
    if not seed.strip():
        return None
    try:
        code = _totp_now(seed)
    except ValueError as exc:
        return Check(FAIL, "TOTP", f"{exc}; it is the base32 seed shown when 2FA was set up, not a 6-digit code")
    if not (str(code).isdigit() and len(str(code)) == 6):
        return Check(FAIL, "TOTP", "the seed does not yield a 6-digit code")
    return Check(OK, "TOTP", "the seed decodes and yields a 6-digit code")


def parse_request_time(text: str) -> datetime:
    """The broker's `request_time` ("HH:MM:SS DD-MM-YYYY", IST) as an aware datetime."""
    return datetime.strptime(text.strip(), "%H:%M:%S %d-%m-%Y").replace(tzinfo=IST)


def clock_check(request_time: str, sent_at: float, received_at: float,
                max_skew_s: float = MAX_CLOCK_SKEW_S) -> Check:
    """Compare the broker's stamp with our clock at the middle of the exchange (the stamp has 1 s steps)."""
    try:
        broker = parse_request_time(request_time).timestamp()
    except ValueError:
        return Check(WARN, "clock", f"the broker's request_time {request_time[:40]!r} is not HH:MM:SS DD-MM-YYYY")
    ours = (sent_at + received_at) / 2
    skew = ours - broker
    # The stamp is truncated to the second and the round trip blurs it: allow both before calling it skew.
    slack = 1.0 + (received_at - sent_at) / 2
    if abs(skew) > max_skew_s + slack:
        way = "ahead of" if skew > 0 else "behind"
        return Check(FAIL, "clock", f"this machine is {abs(skew):.0f} s {way} the broker (more than "
                                    f"{max_skew_s:.0f} s): TOTP codes and order times will be off; sync it (NTP)")
    return Check(OK, "clock", f"agrees with the broker within {max(abs(skew), 1.0):.0f} s")


def probe_request_time(rest_url: str, uid: str, timeout_s: float) -> tuple[str | None, float, float]:
    """An unauthenticated call that any NorenOMS answers with a stamped error (no login, no session touched).
    Returns (request_time or None, sent_at, received_at)."""
    import json

    import requests

    url = rest_url.rstrip("/") + "/UserDetails"
    body = "jData=" + json.dumps({"uid": uid}) + "&jKey="
    sent = time.time()
    reply = requests.post(url, data=body, timeout=timeout_s,
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    received = time.time()
    try:
        data = reply.json()
    except ValueError:
        return None, sent, received
    stamp = data.get("request_time") if isinstance(data, dict) else None
    return (str(stamp) if stamp else None), sent, received


def port_check(name: str, host: str, port: int) -> Check:
    """Free if we can bind it the way a server would (SO_REUSEADDR: a TIME_WAIT socket is not "busy")."""
    if port == 0:
        return Check(OK, name, "0: an ephemeral port is chosen at start")
    bind_host = host.strip() or "0.0.0.0"
    family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((bind_host, port))
    except PermissionError:
        return Check(FAIL, name, f"{bind_host}:{port} needs root (ports below 1024): keep the service on a high "
                                 f"port and put Caddy in front (`oms deploy caddy`)")
    except OSError as exc:
        what = "in use by another process" if exc.errno in (98, 48) else (exc.strerror or type(exc).__name__)
        return Check(FAIL, name, f"{bind_host}:{port} {what}")
    finally:
        sock.close()
    return Check(OK, name, f"{bind_host}:{port} free")


def data_dir_check(data_dir: Path) -> Check:
    if data_dir.exists() and not data_dir.is_dir():
        return Check(FAIL, "data dir", f"{data_dir} is not a directory")
    if not data_dir.exists():
        parent = next((p for p in data_dir.absolute().parents if p.exists()), None)
        if parent is None or not _writable(parent):
            return Check(FAIL, "data dir", f"{data_dir} does not exist and {parent} is not writable")
        return Check(OK, "data dir", f"{data_dir} will be created at the first start ({parent} is writable)")
    if not _writable(data_dir):
        return Check(FAIL, "data dir", f"{data_dir} is not writable by this user")
    return Check(OK, "data dir", f"{data_dir} writable")


def _writable(directory: Path) -> bool:
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".oms-doctor-"):
            return True
    except OSError:
        return False


def database_check(path: Path) -> Check:
    if not path.exists():
        return Check(OK, "database", f"{path} not created yet (the first start creates it)")
    try:
        # Read-only: never a write to the live database, even while the service runs.
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            rows = [row[0] for row in db.execute("PRAGMA integrity_check").fetchall()]
        finally:
            db.close()
    except sqlite3.Error as exc:
        return Check(FAIL, "database", f"{path}: {exc}")
    if rows != ["ok"]:
        return Check(FAIL, "database", f"{path} fails PRAGMA integrity_check: {'; '.join(rows[:3])}")
    return Check(OK, "database", f"{path} passes PRAGMA integrity_check")


def disk_check(data_dir: Path, min_free: int = MIN_FREE_BYTES) -> Check:
    where = next((p for p in [data_dir.absolute(), *data_dir.absolute().parents] if p.exists()))
    free = shutil.disk_usage(where).free
    if free < min_free:
        return Check(WARN, "disk", f"only {free / 1e9:.2f} GB free under {where} (under {min_free / 1e9:.0f} GB): "
                                   f"logs and the database need room")
    return Check(OK, "disk", f"{free / 1e9:.1f} GB free under {where}")


def health_check(config: Config, pid: int | None) -> Check:
    import requests

    from runtime.cli import _service_url

    url = _service_url(config) + "/health"
    who = f"the running service (PID {pid})" if pid else "the running service"
    if config.service.port == 0:
        return Check(WARN, "service", f"{who} listens on an ephemeral port (service.port = 0): not asked")
    try:
        reply = requests.get(url, timeout=HEALTH_TIMEOUT_S)
    except requests.RequestException as exc:
        return Check(FAIL, "service", f"{who} holds the lock but {url} does not answer ({type(exc).__name__})")
    try:
        data = reply.json()
    except ValueError:
        data = {}
    data = data if isinstance(data, dict) else {}
    if reply.status_code == 200:
        return Check(OK, "service", f"{who} answers GET /health: {data.get('status', 'ok')}")
    parts = [f"{key} {data[key]}" for key in ("status", "broker", "reason") if data.get(key)]
    return Check(FAIL, "service", f"{who} answers GET /health with {reply.status_code}"
                                  + (": " + ", ".join(parts) if parts else ""))


# ---- broker: login and WebSocket ----------------------------------------------------------------------

def broker_checks(config: Config, rest_url: str, ws_url: str, where: str, login: bool = True) -> list[Check]:
    """Compare clocks, log in (QuickAuth) and open the WebSocket with that session, then log out."""
    from runtime.noren.errors import BrokerError, LoginFailed
    from runtime.noren.rest import NorenRestClient
    from runtime.noren.ws import STATE_AUTH_FAILED, NorenWebSocket

    b = config.broker
    checks: list[Check] = []
    try:
        stamp, sent, received = probe_request_time(rest_url, b.user_id, b.request_timeout_s)
    except Exception as exc:  # noqa: BLE001 - any failure to reach the broker is the finding
        return [Check(FAIL, "broker", f"cannot reach {rest_url} ({type(exc).__name__})")]
    checks.append(clock_check(stamp, sent, received) if stamp
                  else Check(WARN, "clock", "the broker's reply carries no request_time: not compared"))
    if not login:
        checks.append(Check(FAIL, "broker login", "not tried until the credentials above are right (failed logins "
                                                  "in a row can lock the account)"))
        return checks
    if b.auth == "oauth":
        checks.append(Check(WARN, "broker login", "not tried: the OAuth auth code is single-use and `oms run` "
                                                  "needs it"))
        return checks
    client = NorenRestClient(rest_url, auth=b.auth, connect_timeout_s=b.connect_timeout_s,
                             request_timeout_s=b.request_timeout_s)
    try:
        try:
            client.login_quickauth(b.user_id, b.password, b.totp_secret, b.vendor_code, b.api_secret, b.imei)
        except LoginFailed as exc:
            checks.append(Check(FAIL, "broker login", f"{where} refused {b.user_id}: {exc.emsg or exc}"))
            return checks
        except ValueError as exc:  # an unusable TOTP seed: already reported above
            checks.append(Check(FAIL, "broker login", f"not tried: {exc}"))
            return checks
        except BrokerError as exc:
            checks.append(Check(FAIL, "broker login", f"{where}: {type(exc).__name__}: {exc}"))
            return checks
        checks.append(Check(OK, "broker login", f"{b.user_id} logged in at {where}"))
        if not b.use_websocket:
            checks.append(Check(OK, "websocket", "not used (broker.use_websocket = false)"))
        else:
            checks.append(_websocket_check(NorenWebSocket, STATE_AUTH_FAILED, client, ws_url, b.auth))
    finally:
        try:
            if client.logged_in:
                client.logout()
        except Exception:  # noqa: BLE001 - a session left to expire by itself is harmless
            pass
        client.close()
    return checks


def _websocket_check(ws_class, auth_failed: str, client, ws_url: str, auth: str) -> Check:
    refused = threading.Event()

    def on_state(state: str) -> None:
        if state == auth_failed:
            refused.set()

    ws = ws_class(ws_url, lambda: client.session, auth=auth, on_order=lambda _update: None, on_state=on_state,
                  backoff_initial_s=0.5, connect_timeout_s=5.0, auth_timeout_s=5.0)
    ws.start()
    try:
        deadline = time.monotonic() + WS_TIMEOUT_S
        while time.monotonic() < deadline:
            if ws.connected.wait(0.1):
                return Check(OK, "websocket", f"connected and authenticated at {ws_url}")
            if refused.is_set():
                return Check(FAIL, "websocket", f"{ws_url} refused the session")
        return Check(FAIL, "websocket", f"no authenticated connection to {ws_url} within {WS_TIMEOUT_S:.0f} s")
    finally:
        ws.stop()


def _embedded_paper(config: Config):
    """The embedded paper exchange on a free port, with a throw-away state: the real one is not touched."""
    from runtime.paper import PaperExchange

    update: dict = {"port": 0, "host": "127.0.0.1"}
    state_dir = None
    if "state_file" in type(config.paper).model_fields:
        state_dir = tempfile.TemporaryDirectory(prefix="oms-doctor-")
        update["state_file"] = str(Path(state_dir.name) / "paper_state.json")
    exchange = PaperExchange(config.paper.model_copy(update=update))
    exchange.start()
    return exchange, state_dir


# ---- all of it ----------------------------------------------------------------------------------------

def _secrets_of(config: Config) -> list[str]:
    values = [config.broker.password, config.broker.totp_secret, config.broker.api_secret, config.broker.auth_code,
              config.webhook.secret_key, config.telegram.token, config.operator.token, config.operator.password,
              config.webhook.path_token, *config.paper.users.values()]
    return sorted({v for v in values if v and len(v) >= 4}, key=len, reverse=True)


def _redacted(check: Check, secrets: list[str]) -> Check:
    detail = check.detail
    for secret in secrets:
        detail = detail.replace(secret, "<redacted>")
    return check if detail == check.detail else Check(check.status, check.name, detail)


def run_checks(config_path: str | None) -> Iterator[Check]:
    """Every check, in order, as it completes."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        yield Check(FAIL, "config", str(exc))
        return
    secrets = _secrets_of(config)
    for check in _checks(config, config_path):
        yield _redacted(check, secrets)


def _checks(config: Config, config_path: str | None) -> Iterator[Check]:
    from runtime import instance_lock
    from runtime.cli import run_lock_path
    from runtime.system import LIVE_REST_URL, LIVE_WS_URL

    b = config.broker
    source = config_path or ("config.toml" if Path("config.toml").exists() else "no ./config.toml, the defaults")
    yield Check(OK, "config", f"{source} loads (broker.mode {b.mode}, auth {b.auth})")
    credentials_ok = True
    for check in check_secrets(config):
        credentials_ok = credentials_ok and not (check.name == "broker credentials" and check.status == FAIL)
        yield check
    if (totp := check_totp(config)) is not None:
        credentials_ok = credentials_ok and totp.status != FAIL
        yield totp

    lock = run_lock_path(config)
    pid = instance_lock.holder_pid(lock) if instance_lock.is_held(lock) else None
    running = instance_lock.is_held(lock)
    embedded = b.mode == "paper" and not (b.rest_url and b.ws_url)
    if running:
        yield health_check(config, pid)
        yield Check(OK, "broker login", "not tried: the running service holds the session (a second login could "
                                        "end it); see the service line above")
    elif embedded:
        try:
            exchange, state_dir = _embedded_paper(config)
        except Exception as exc:  # noqa: BLE001
            yield Check(FAIL, "broker", f"the embedded paper exchange did not start ({type(exc).__name__}: {exc})")
        else:
            try:
                yield from broker_checks(config, exchange.rest_url, exchange.ws_url, "the embedded paper exchange")
            finally:
                exchange.stop()
                if state_dir is not None:
                    state_dir.cleanup()
    else:
        rest_url = b.rest_url or (LIVE_REST_URL if b.mode == "shoonya" else "")
        ws_url = b.ws_url or (LIVE_WS_URL if b.mode == "shoonya" else "")
        # A login that is sure to fail is not tried: wrong attempts in a row can lock the account at the broker.
        yield from broker_checks(config, rest_url, ws_url, rest_url, login=credentials_ok)

    ports = [("service port", config.service.host, config.service.port)]
    if config.operator.port and config.operator.port != config.service.port:
        ports.append(("operator port", config.operator.host or config.service.host, config.operator.port))
    if embedded:
        ports.append(("paper port", config.paper.host, config.paper.port))
    for name, host, port in ports:
        if running and port:
            yield Check(OK, name, f"{port} in use by the running service" + (f" (PID {pid})" if pid else ""))
        else:
            yield port_check(name, host, port)

    data_dir = Path(config.service.data_dir)
    yield data_dir_check(data_dir)
    yield database_check(data_dir / "orders.db")
    yield disk_check(data_dir)
