"""Instrument symbols relative to today, so the suite never trades an expired contract as the calendar moves.

NFO/BFO option symbols are NAME + DDMMMYY + C|P + strike, futures NAME + DDMMMYY + F (shared/NORENOMS.md).
The expiry used is the last Tuesday of the month after the current one: always weeks in the future.
"""

from __future__ import annotations

import calendar
from datetime import date, timedelta


def expiry(today: date | None = None, months_ahead: int = 1) -> date:
    """The last Tuesday of the month `months_ahead` after today's month."""
    today = today or date.today()
    year, month = divmod(today.month - 1 + months_ahead, 12)
    year, month = today.year + year, month + 1
    last = date(year, month, calendar.monthrange(year, month)[1])
    return last - timedelta(days=(last.weekday() - calendar.TUESDAY) % 7)


def expiry_code(day: date | None = None) -> str:
    """DDMMMYY, e.g. 26JAN27."""
    day = day or expiry()
    return f"{day.day:02d}{calendar.month_abbr[day.month].upper()}{day.year % 100:02d}"


def option(name: str = "NIFTY", kind: str = "C", strike: int = 25700, day: date | None = None) -> str:
    """An option symbol, e.g. option("NIFTY", "C", 25700) -> NIFTY26JAN27C25700."""
    return f"{name}{expiry_code(day)}{kind}{strike}"


def future(name: str = "NIFTY", day: date | None = None) -> str:
    return f"{name}{expiry_code(day)}F"


NIFTY_CE = option("NIFTY", "C", 25700)
NIFTY_PE = option("NIFTY", "P", 25700)
BANKNIFTY_CE = option("BANKNIFTY", "C", 52000)
NIFTY_FUT = future("NIFTY")
