"""Service control: timers, notifications, the listeners' lifecycle and diagnostic reads."""

from __future__ import annotations

from messages.base import Frozen


class Notify(Frozen):
    kind: str  # alert | blocked | placed | filled | rejected | service | risk | external | supervisor
    text: str
    command_id: str | None = None


class Tick(Frozen):
    """A timer tick delivered to an actor's own mailbox."""

    name: str = "tick"


class GetNotifierStats(Frozen):
    """-> Notifier (ask): its counters, the outbox length and the recent notifications."""


class GetPort(Frozen):
    """-> Ingress/Operator (ask): the port its listener is bound to."""


class Accept(Frozen):
    """-> Ingress/Operator (ask): start accepting alerts (start-up recovery is done). Answered True."""


class Refuse(Frozen):
    """-> Ingress/Operator (ask): refuse new alerts with 503 (the service is stopping). Answered True."""


class GetLedger(Frozen):
    """-> Guard (ask): its per-strategy ledger, {"positions": {"S|EXCH|SYM|PROD": qty}, "in_flight": [...]}."""
