"""Configuration: `config.toml` read with tomllib into frozen pydantic models.

Every key is optional. An unknown key, a wrong type or a missing file raises ConfigError with one line
naming the file, the key and what was expected; the CLI turns that into exit code 2.
Secrets may come from `OMS_*` environment variables, which win over the file.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(Exception):
    """A configuration problem, phrased for an operator in one line."""


class _Section(BaseModel):
    # strict: TOML already has types, so `port = true` or `port = "80"` is a mistake to report, not coerce.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ServiceConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    data_dir: str = "data"
    client_id: str = "paper"
    # SQLite durability: FULL fsyncs every commit (survives power loss); NORMAL survives a process crash.
    db_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    max_body_bytes: int = Field(65536, gt=0)
    max_legs: int = Field(20, gt=0)
    # A CREATED order older than this at restart is never sent (EXPIRED_ON_RESTART).
    max_signal_age_s: float = Field(30.0, gt=0)
    # `oms verify` and /diagnostics call a non-terminal order stuck after this long.
    stuck_after_s: float = Field(120.0, gt=0)
    listener_threads: int = Field(16, gt=0)
    log_level: str = "INFO"
    shutdown_drain_s: float = Field(10.0, ge=0)
    # Reverse proxies in front of the listener (addresses/networks): only behind one of these is X-Forwarded-For
    # believed, and the client address is its rightmost hop that is not a trusted proxy.
    trusted_proxies: list[str] = []


class WebhookConfig(_Section):
    secret_key: str = ""
    # POST /webhook/<path_token> authenticates by the path (TradingView cannot send headers). A long random value.
    path_token: str = ""
    # Who may send alerts: empty = anyone with the secret; a list of addresses/networks; or "tradingview" (its
    # four published addresses).
    allow_ips: list[str] | Literal["tradingview"] = []


class OperatorConfig(_Section):
    """`[operator]`: everything but the webhook needs these credentials (README "Going live")."""

    token: str = ""  # Authorization: Bearer <token>; empty: generated at first start into <data_dir>/operator_token
    password: str = ""  # the dashboard's login: plain, or a hash from `oms operator hash-password`
    host: str = ""  # with port: the operator surface on its own listener; empty/0: shares the service port
    port: int = Field(0, ge=0, le=65535)


class BrokerConfig(_Section):
    mode: Literal["paper", "shoonya"] = "paper"
    auth: Literal["quickauth", "oauth"] = "quickauth"
    # Empty: the embedded paper exchange's URLs (mode=paper) or the live legacy hosts (mode=shoonya).
    rest_url: str = ""
    ws_url: str = ""
    user_id: str = "PAPER1"
    password: str = ""
    totp_secret: str = ""
    vendor_code: str = ""
    api_secret: str = ""
    imei: str = "shoonya-oms"
    # OAuth: the app's client id and the auth code from the browser redirect.
    oauth_client_id: str = ""
    auth_code: str = ""
    connect_timeout_s: float = Field(2.0, gt=0)
    request_timeout_s: float = Field(5.0, gt=0)
    orders_per_second: float = Field(10.0, gt=0)
    orders_per_minute: float = Field(200.0, gt=0)
    # Session Expired / connection refused: bounded re-login and retry budget (the order was not placed).
    max_send_attempts: int = Field(3, ge=1)
    poll_interval_s: float = Field(2.0, gt=0)
    use_websocket: bool = True
    # Unknown-outcome orders: how long to look for them in the OrderBook before LOST_IN_FLIGHT.
    lost_grace_s: float = Field(30.0, gt=0)
    lost_min_lookups: int = Field(3, ge=1)
    # Market protection: the live broker refuses MKT / SL-MKT from API clients. On: MARKET goes out as LMT at
    # the last price (GetQuotes, per order) +/- the band of its kind, SL-M as SL-LMT at trigger +/- the band,
    # rounded to the tick (BUY up, SELL down). Off: MKT / SL-MKT as they are (brokers that accept them).
    market_protection: bool = True
    # Percent by instrument kind; a kind left out keeps its default.
    market_protection_pct: dict[str, float] = {"option": 5.0, "future": 1.0, "equity": 1.0}
    # Exchange freeze quantity (units) by underlying, over the built-in table (actors/broker.py FREEZE_QTY:
    # NIFTY 1800, BANKNIFTY 900, FINNIFTY 1800, MIDCPNIFTY 2800, NIFTYNXT50 600, SENSEX 1000, BANKEX 900).
    # A leg above it is split into child orders of at most that size (whole lots); 0: never split.
    freeze_qty: dict[str, int] = {}

    @field_validator("market_protection_pct")
    @classmethod
    def _protection_bands(cls, value: dict[str, float]) -> dict[str, float]:
        kinds = ("option", "future", "equity")
        for kind, pct in value.items():
            if kind not in kinds:
                raise ValueError(f"unknown instrument kind {kind!r}; expected one of {', '.join(kinds)}")
            if not 0 <= pct < 100:
                raise ValueError(f"{kind} = {pct!r}: a percentage from 0 to below 100")
        return {"option": 5.0, "future": 1.0, "equity": 1.0, **value}

    @field_validator("freeze_qty")
    @classmethod
    def _freeze_qty(cls, value: dict[str, int]) -> dict[str, int]:
        for name, qty in value.items():
            if qty < 0:
                raise ValueError(f"{name} = {qty!r}: a quantity >= 0 (0: never split)")
        return {name.strip().upper(): qty for name, qty in value.items()}


class PaperConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(9090, ge=0, le=65535)
    fill_delay_ms: int = Field(50, ge=0)
    reject_symbols: list[str] = []
    # uid -> password; empty accepts any credentials.
    users: dict[str, str] = {}
    seed: int = 7
    # Orders above this quantity fill in several partial fills of at most this size.
    fill_slice_qty: int = Field(1000, gt=0)
    # Refuse MKT / SL-MKT like the live broker does for API orders (the service sends LMT / SL-LMT instead,
    # see broker.market_protection).
    reject_market_orders: bool = True
    # Random-walk step as a fraction of price, per tick.
    walk_volatility: float = Field(0.0005, ge=0)
    tick_interval_ms: int = Field(500, gt=0)
    # Like the exchange: reject a qty that is not a lot multiple or exceeds the freeze qty, and prices off the tick.
    enforce_lot_tick: bool = False
    # Limits `cash` of every paper account.
    cash: float = Field(10_000_000.0, ge=0)


class TelegramConfig(_Section):
    token: str = ""
    chat_id: str = ""
    api_url: str = "https://api.telegram.org"
    timeout_s: float = Field(5.0, gt=0)
    max_attempts: int = Field(5, ge=1)


class RiskConfig(_Section):
    """`[risk]`: limits on ENTRY orders (an EXIT is never blocked by risk). 0 switches a limit off.

    See README "Risk" and actors/risk_rules.py for the exact arithmetic.
    """

    # Rupees (positive). Breach when day PnL (rpnl + urmtom of non-CNC positions) <= -max_daily_loss,
    # raised by the trailing level: floor = floor(peak / trail_step) * trail_step - max_daily_loss.
    max_daily_loss: float = Field(0.0, ge=0)
    trail_step: float = Field(0.0, ge=0)
    warning_at: float = Field(0.8, gt=0, le=1)  # fraction of max_daily_loss that triggers the one warning
    max_loss_days: int = Field(0, ge=0)  # consecutive loss days before a one-trading-day cooldown
    max_lots_per_order: int = Field(0, ge=0)
    max_notional_per_order: float = Field(0.0, ge=0)  # rupees, qty * price (MARKET: last price)
    max_open_positions: int = Field(0, ge=0)  # distinct positions incl. entries in flight
    max_entries_per_second: float = Field(10.0, ge=0)
    max_entries_per_minute: float = Field(200.0, ge=0)
    # Unset: decided by broker.mode alone when the whole Config is read (on for "shoonya", off for "paper"),
    # never by the URL: a live set-up pointed at a rehearsal exchange must behave as it will live.
    enforce_trading_hours: bool | None = None
    # Exchange -> "HH:MM" IST: no entries on that exchange from then on, and its MIS positions are flattened.
    square_off_time: dict[str, str] = {}
    pnl_poll_interval_s: float = Field(5.0, gt=0)
    # A spread whose legs did not all go out (a leg rejected after others were sent): "notify" tells you loudly
    # and leaves it to you; "exit" also cancels its open legs and exits the legs that filled.
    one_legged: Literal["notify", "exit"] = "notify"
    # PositionBook rounds a flatten keeps trying what it cannot exit (a position no strategy holds, a cancel
    # the broker refuses, an exit rejected) before it ends and names them.
    flatten_max_rounds: int = Field(10, ge=1)

    @field_validator("square_off_time")
    @classmethod
    def _square_off(cls, value: dict[str, str]) -> dict[str, str]:
        known = ("NSE", "NFO", "BSE", "BFO", "MCX", "CDS")
        for exchange, text in value.items():
            if exchange not in known:
                raise ValueError(f"unknown exchange {exchange!r}; expected one of {', '.join(known)}")
            hours, _, minutes = text.strip().partition(":")
            if not (hours.isdigit() and len(hours) <= 2 and minutes.isdigit() and len(minutes) == 2
                    and int(hours) <= 23 and int(minutes) <= 59):
                raise ValueError(f"{exchange} = {text!r} is not a time HH:MM (IST)")
        return value


class Config(_Section):
    service: ServiceConfig = ServiceConfig()
    webhook: WebhookConfig = WebhookConfig()
    operator: OperatorConfig = OperatorConfig()
    broker: BrokerConfig = BrokerConfig()
    paper: PaperConfig = PaperConfig()
    telegram: TelegramConfig = TelegramConfig()
    risk: RiskConfig = RiskConfig()

    @model_validator(mode="before")
    @classmethod
    def _trading_hours_by_mode(cls, data):
        # risk.enforce_trading_hours left unset takes its value from broker.mode, so every reader of a Config
        # (risk engine, start-up log) sees the one effective value.
        if not isinstance(data, dict):
            return data
        risk, broker = data.get("risk", {}), data.get("broker", {})
        if not isinstance(risk, dict) or risk.get("enforce_trading_hours") is not None:
            return data
        mode = broker.get("mode", "paper") if isinstance(broker, dict) else "paper"
        return {**data, "risk": {**risk, "enforce_trading_hours": mode == "shoonya"}}

    @property
    def data_path(self) -> Path:
        return Path(self.service.data_dir)


# Environment variables that override secrets: name -> (section, key).
SECRET_ENV = {
    "OMS_WEBHOOK_SECRET": ("webhook", "secret_key"),
    "OMS_BROKER_PASSWORD": ("broker", "password"),
    "OMS_BROKER_TOTP_SECRET": ("broker", "totp_secret"),
    "OMS_BROKER_API_SECRET": ("broker", "api_secret"),
    "OMS_BROKER_AUTH_CODE": ("broker", "auth_code"),
    "OMS_TELEGRAM_TOKEN": ("telegram", "token"),
    "OMS_OPERATOR_TOKEN": ("operator", "token"),
    "OMS_OPERATOR_PASSWORD": ("operator", "password"),
    "OMS_WEBHOOK_PATH_TOKEN": ("webhook", "path_token"),
}


# The sample secret shipped in config.toml: anyone who read the README knows it.
SAMPLE_SECRETS = frozenset({"change-me"})


def check_startable(config: Config) -> None:
    """Refuse a start that would be unsafe with real money (ConfigError, one line, exit 2).

    Live mode (broker.mode "shoonya") needs a webhook secret of its own: with none, or the sample one, anyone
    who can reach the listener could place orders.
    """
    secret = config.webhook.secret_key.strip()
    if config.broker.mode == "shoonya" and (not secret or secret in SAMPLE_SECRETS):
        what = "no webhook secret" if not secret else "the sample webhook secret of config.toml"
        raise ConfigError(f"broker.mode = \"shoonya\" (live) with {what}: set webhook.secret_key "
                          f"(or OMS_WEBHOOK_SECRET) to a long random value of your own")


def _describe_error(source: str, err: dict) -> str:
    key = ".".join(str(part) for part in err.get("loc", ()))
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return f"{source}: unknown key '{key}'"
    expected = err.get("msg", "invalid value")
    given = err.get("input")
    loc = err.get("loc", ())
    # Echo the value only for an ordinary key; never for a section, a secret or the paper users' passwords.
    secret = any(word in key for word in ("secret", "password", "token", "auth_code", "users"))
    shown = "" if (secret or len(loc) != 2 or isinstance(given, (dict, list))) else f" (got {given!r})"
    return f"{source}: key '{key}': {expected}{shown}"


def config_from_dict(raw: dict, source: str = "<config>", environ: dict | None = None) -> Config:
    """Build a Config from a parsed TOML dict plus OMS_* secret overrides."""
    env = os.environ if environ is None else environ
    merged = {section: dict(values) if isinstance(values, dict) else values for section, values in raw.items()}
    for var, (section, key) in SECRET_ENV.items():
        if env.get(var):
            target = merged.setdefault(section, {})
            if isinstance(target, dict):
                target[key] = env[var]
    try:
        return Config.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(_describe_error(source, first)) from None


def load_config(path: str | os.PathLike | None = None, environ: dict | None = None) -> Config:
    """Load `path` (default ./config.toml; a missing default file means all defaults).

    A path given explicitly must exist.
    """
    explicit = path is not None
    file = Path(path) if explicit else Path("config.toml")
    if not file.exists():
        if explicit:
            raise ConfigError(f"{file}: file not found")
        return config_from_dict({}, source=str(file), environ=environ)
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror}") from None
    return config_from_dict(raw, source=str(file), environ=environ)
