"""The operator's risk commands as messages for RiskActor: one parser for the JSON API and the dashboard (pure).

It lives apart from both the listener and the risk actor, so neither imports the other.
"""

from __future__ import annotations

from messages.orders import EXCHANGES
from messages.commands import Halt, Resume
from messages.risk import Flatten, Reduce, StopFlatten


def risk_request(path: str, data: dict) -> Halt | Resume | Reduce | Flatten | StopFlatten | tuple[int, dict]:
    """`POST /risk/halt|resume|reduce|flatten|flatten/stop` as a message for RiskActor, or the (status, body)
    refusal.

    `data` is the JSON body of an operator already authenticated (operator token or dashboard session)."""
    if path.endswith("/flatten/stop"):
        return StopFlatten()
    if path.endswith("/halt"):
        return Halt(reason="MANUAL")
    if path.endswith("/resume"):
        return Resume()
    if path.endswith("/reduce"):
        return Reduce()
    strategy, exchange = data.get("strategy"), data.get("exchange")
    if exchange is not None and exchange.strip().upper() not in EXCHANGES:
        return 400, {"error": f"exchange must be one of {sorted(EXCHANGES)}"}
    return Flatten(strategy=strategy.strip() if strategy else None,
                   exchange=exchange.strip().upper() if exchange else None, reason="MANUAL")
