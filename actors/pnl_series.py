"""The day's P&L through the day, for the dashboard's chart (pure).

RiskActor adds one sample per PositionBook read; samples are kept one per minute (the last read of a minute
wins), for the current IST trading day only, so a day is at most 1440 points. `svg` draws the P&L and the loss
floor as an inline SVG (no script, no external asset: the dashboard's Content-Security-Policy allows it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

MAX_POINTS = 1440
IST = timezone(timedelta(hours=5, minutes=30))


@dataclass
class PnlSeries:
    day: str | None = None  # the IST trading day (ISO date) the points belong to
    points: list[tuple[str, float, float | None]] = field(default_factory=list)  # (UTC minute, pnl, floor)

    def add(self, now: datetime, day: date, pnl: float | None, floor: float | None) -> None:
        if pnl is None:
            return
        if self.day != day.isoformat():
            self.day, self.points = day.isoformat(), []
        minute = now.astimezone(timezone.utc).replace(second=0, microsecond=0).isoformat()
        point = (minute, round(float(pnl), 2), None if floor is None else round(float(floor), 2))
        if self.points and self.points[-1][0] == minute:
            self.points[-1] = point
        else:
            self.points.append(point)
            del self.points[:-MAX_POINTS]

    def to_json(self) -> str:
        return json.dumps({"day": self.day, "points": self.points})

    @classmethod
    def from_json(cls, text: str | None) -> "PnlSeries":
        try:
            data = json.loads(text or "{}")
            return cls(day=data.get("day"), points=[tuple(p) for p in data.get("points", [])][-MAX_POINTS:])
        except (ValueError, TypeError, AttributeError):
            return cls()

    def as_dict(self) -> dict:
        return {"day": self.day, "points": [{"at": at, "pnl": pnl, "floor": floor} for at, pnl, floor in
                                            self.points]}


def svg(points: list[dict], width: int = 640, height: int = 200) -> str:
    """An inline SVG of the P&L (line) and the loss floor (dashed) against IST time; "" without points."""
    if not points:
        return ""
    times = [datetime.fromisoformat(p["at"]).timestamp() for p in points]
    values = [p["pnl"] for p in points] + [p["floor"] for p in points if p["floor"] is not None] + [0.0]
    t0, t1 = min(times), max(times) if max(times) > min(times) else min(times) + 60
    lo, hi = min(values), max(values)
    if hi - lo < 1e-9:
        lo, hi = lo - 1, hi + 1
    pad = 28

    def xy(t: float, v: float) -> str:
        x = pad + (t - t0) / (t1 - t0) * (width - 2 * pad)
        y = pad / 2 + (hi - v) / (hi - lo) * (height - pad)
        return f"{x:.1f},{y:.1f}"

    pnl_line = " ".join(xy(t, p["pnl"]) for t, p in zip(times, points))
    floors = [(t, p["floor"]) for t, p in zip(times, points) if p["floor"] is not None]
    floor_line = " ".join(xy(t, f) for t, f in floors)
    zero = xy(t0, 0.0).split(",")[1]
    start = datetime.fromtimestamp(t0, IST).strftime("%H:%M")
    end = datetime.fromtimestamp(t1, IST).strftime("%H:%M")
    parts = [f'<svg class="pnl-chart" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="day P&amp;L against the loss floor">',
             f'<line x1="{pad}" y1="{zero}" x2="{width - pad}" y2="{zero}" class="zero"/>',
             f'<polyline points="{pnl_line}" class="pnl"/>']
    if floor_line:
        parts.append(f'<polyline points="{floor_line}" class="floor"/>')
    parts += [f'<text x="{pad}" y="{height - 2}" class="axis">{start} IST</text>',
              f'<text x="{width - pad}" y="{height - 2}" class="axis end">{end} IST</text>',
              f'<text x="2" y="12" class="axis">{hi:,.0f}</text>',
              f'<text x="2" y="{height - 14}" class="axis">{lo:,.0f}</text>', "</svg>"]
    return "".join(parts)
