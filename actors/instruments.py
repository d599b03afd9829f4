"""Instrument reference facts, pure: kind, underlying, lot sizes and freeze quantities of index derivatives.

One table for everyone (broker: market protection and freeze split; risk: lots per order). The broker's own
figures (SearchScrip / GetQuotes `ls`) win where they are known; these are the fallbacks, the same numbers as
the paper exchange (runtime/paper/engine.py).
"""

from __future__ import annotations

import re

DERIVATIVE_EXCHANGES = frozenset({"NFO", "BFO", "MCX", "CDS", "NCX", "BCD"})
# NAME + DDMMMYY (+ C|P strike, or F): NIFTY27MAR26C25700, NIFTY27MAR26F; BSE style ...75000CE / ...PE.
_EXPIRY = re.compile(r"^(?P<name>.+?)\d{2}[A-Z]{3}\d{2}")
_OPTION = (re.compile(r"\d{2}[A-Z]{3}\d{2}[CP]\d+(?:\.\d+)?$"), re.compile(r"\d(?:CE|PE)$"))
_LEADING_NAME = re.compile(r"^[A-Z&]+")

# Exchange freeze quantities of index derivatives (units, not lots): an order above it is refused by the
# exchange. The same numbers as the paper exchange (runtime/paper/engine.py). `[broker] freeze_qty` overrides
# or adds underlyings (stock derivatives have none built in); 0 switches splitting off for an underlying.
FREEZE_QTY = {"NIFTY": 1800, "BANKNIFTY": 900, "FINNIFTY": 1800, "MIDCPNIFTY": 2800, "NIFTYNXT50": 600,
              "SENSEX": 1000, "BANKEX": 900}
# Lot sizes used only when the broker cannot tell us (SearchScrip / GetQuotes `ls`); as the paper exchange.
LOT_SIZES = {"NIFTY": 65, "BANKNIFTY": 30, "FINNIFTY": 60, "MIDCPNIFTY": 120, "NIFTYNXT50": 25,
             "SENSEX": 20, "BANKEX": 30}


def instrument_kind(exch: str, tsym: str) -> str:
    """"option", "future" or "equity" (everything on a cash exchange: NSE, BSE)."""
    if (exch or "").upper() not in DERIVATIVE_EXCHANGES:
        return "equity"
    symbol = (tsym or "").strip().upper()
    return "option" if any(p.search(symbol) for p in _OPTION) else "future"


def underlying(exch: str, tsym: str) -> str | None:
    """The underlying of a derivative (NIFTY of NIFTY27MAR26C25700); None on a cash exchange."""
    if (exch or "").upper() not in DERIVATIVE_EXCHANGES:
        return None
    symbol = (tsym or "").strip().upper()
    match = _EXPIRY.match(symbol) or _LEADING_NAME.match(symbol)
    if match is None:
        return None
    return match.group("name") if "name" in match.groupdict() else match.group(0)


def freeze_table(overrides: dict[str, int] | None = None) -> dict[str, int]:
    """The built-in freeze quantities with `[broker] freeze_qty` applied (keys upper-cased)."""
    return {**FREEZE_QTY, **{k.upper(): int(v) for k, v in (overrides or {}).items()}}


def freeze_qty(exch: str, tsym: str, table: dict[str, int]) -> int | None:
    """The freeze quantity of a derivative leg, None when it has none (equities; unknown underlyings; 0)."""
    name = underlying(exch, tsym)
    value = table.get(name) if name else None
    return value if value and value > 0 else None


def lot_size_fallback(exch: str, tsym: str) -> int | None:
    name = underlying(exch, tsym)
    return LOT_SIZES.get(name) if name else None
