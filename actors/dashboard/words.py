"""Plain words for the dashboard: why an order failed, times in IST, money. Pure."""

from __future__ import annotations

from datetime import datetime

from actors.risk_rules import IST

_REASONS = {
    "KILL_SWITCH": "trading halted by the operator",
    "DAILY_LOSS_HIT": "the daily loss limit was hit",
    "LOSS_DAYS_COOLDOWN": "cooldown day after losing days",
    "REDUCING_ONLY": "exits only (REDUCING)",
    "MAX_LOTS_EXCEEDED": "more lots than allowed per order",
    "MAX_NOTIONAL_EXCEEDED": "order value above the limit",
    "PRICE_UNKNOWN": "no last price to check the order value",
    "MAX_OPEN_POSITIONS": "too many open positions",
    "ENTRY_RATE_PER_SECOND": "too many entries this second",
    "ENTRY_RATE_PER_MINUTE": "too many entries this minute",
    "OUTSIDE_TRADING_HOURS": "outside trading hours",
    "AFTER_SQUARE_OFF": "after the square-off time",
    "STRATEGY_HAS_POSITION": "the strategy already holds a position there",
    "CROSS_STRATEGY_CONFLICT": "another strategy holds the opposite position",
    "NO_POSITION": "the strategy holds nothing to exit",
    "BROKER_FLAT": "the broker holds nothing to exit (written off the ledger)",
    "OPEN_ORDER_EXISTS": "an order for it is already open",
    "OTHER_LEG_BLOCKED": "another leg of the same alert was blocked",
    "NOT_LOGGED_IN": "not logged in to the broker",
    "NO_QUOTE": "no price to protect the market order",
    "NO_TICK_SIZE": "tick size unknown",
}

_BLOCKERS = {
    "VALIDATION_FAILED": "invalid order",
    "RISK_BLOCKED": "blocked by risk",
    "GUARD_BLOCKED": "blocked by the position guard",
    "DUPLICATE_BLOCKED": "blocked as a duplicate",
    "SEND_FAILED": "not sent to the broker",
    "INTERNAL_ERROR": "internal error in",
}

_WHOLE = {
    "BROKER_CANCELED": "cancelled at the broker",
    "BROKER_EXPIRED": "expired at the broker",
    "LOST_IN_FLIGHT": "lost in flight: the broker never showed it (check its order book before re-sending)",
    "EXPIRED_ON_RESTART": "too old at restart: never sent",
    "BROKER_UNKNOWN_ORDER": "the broker no longer knows this order (check its order book)",
}


def _words(reason: str) -> str:
    return ", ".join(_REASONS.get(part, part.replace("_", " ").lower()) for part in reason.split(",") if part)


def plain_tag(tag: str | None) -> str:
    """A FAILED order's tag as a sentence a trader reads at a glance (the tag itself is shown beside it)."""
    if not tag:
        return ""
    head, _, rest = tag.partition(":")
    if head == "BROKER_REJECTED":
        return f"rejected by the broker: {rest}" if rest else "rejected by the broker"
    if head in ("BROKER_CANCELED", "BROKER_CANCELLED", "BROKER_EXPIRED") and rest:
        return f"{_WHOLE.get(head, 'cancelled at the broker')} ({rest})"
    if head in _WHOLE:
        return _WHOLE[head]
    if head in _BLOCKERS:
        return f"{_BLOCKERS[head]}: {_words(rest)}" if rest else _BLOCKERS[head]
    return _words(tag)


def ist(iso: str | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """A stored UTC ISO-8601 time shown in IST ('' when absent, the text itself when unreadable)."""
    if not iso:
        return ""
    try:
        return datetime.fromisoformat(iso).astimezone(IST).strftime(fmt)
    except ValueError:
        return iso


def money(value) -> str:
    return "-" if value is None else f"{value:,.2f}"
