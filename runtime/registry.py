"""Named actor references. Actors address each other by name so that a restarted actor is found again.

While an actor is down (between its death and its restart) messages told to it are parked here and handed
to the new actor, so a restart drops nothing.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Callable

import pykka
from loguru import logger


class InjectedFault(RuntimeError):
    """Raised inside an actor by a test-injected fault (see Registry.inject_fault)."""


class Registry:
    def __init__(self):
        self._refs: dict[str, pykka.ActorRef] = {}
        self._down: set[str] = set()
        self._parked: dict[str, list] = defaultdict(list)
        self._faults: dict[str, dict] = {}
        self._drops: dict[str, dict] = {}
        self._lock = threading.RLock()
        self.supervisor = None
        self.broker_session = None  # the broker session's state (actors.broker_session.SessionGate), for /health

    def set(self, name: str, ref: pykka.ActorRef) -> None:
        with self._lock:
            self._refs[name] = ref
            self._down.discard(name)
            parked = self._parked.pop(name, [])
        for message in parked:
            ref.tell(message)

    def mark_down(self, name: str) -> None:
        with self._lock:
            self._down.add(name)

    def get(self, name: str) -> pykka.ActorRef | None:
        return self._refs.get(name)

    def names(self) -> list[str]:
        return list(self._refs)

    def tell(self, name: str, message) -> bool:
        if self._drops and self._dropped(name, message):
            return True
        with self._lock:
            ref = self._refs.get(name)
            if ref is None or name in self._down:
                return self._park(name, message)
        try:
            ref.tell(message)
            return True
        except pykka.ActorDeadError:
            with self._lock:
                if self._refs.get(name) is ref and self.supervisor is not None and not self.supervisor.stopping:
                    return self._park(name, message)
                current = self._refs.get(name)
            if current is not None and current is not ref:
                return self.tell(name, message)
            logger.warning("actor {} is stopped; {} not delivered", name, type(message).__name__)
            return False

    def _park(self, name: str, message) -> bool:
        if self.supervisor is None or self.supervisor.stopping:
            logger.warning("no running actor {}; {} not delivered", name, type(message).__name__)
            return False
        self._parked[name].append(message)
        return True

    def ask(self, name: str, message, timeout: float | None = 5.0):
        ref = self._refs.get(name)
        if ref is None:
            raise pykka.ActorDeadError(f"no actor named {name}")
        return ref.ask(message, timeout=timeout)

    def ask_future(self, name: str, message):
        """Ask without blocking: the caller decides how long to wait on the returned future."""
        ref = self._refs.get(name)
        if ref is None:
            raise pykka.ActorDeadError(f"no actor named {name}")
        return ref.ask(message, block=False)

    # ---- test faults ----------------------------------------------------------------------------

    def inject_fault(self, name: str, message_type: str, times: int = 1) -> None:
        """Make actor `name` raise on the next `times` messages of type `message_type` (tests only)."""
        with self._lock:
            self._faults[name] = {"type": message_type, "remaining": times}

    def drop_messages(self, name: str, match: Callable[[object], bool], times: int = 1) -> None:
        """Lose the next `times` messages told to actor `name` for which `match` is true, as if they had never
        been sent (tests only: e.g. a WebSocket push that never arrived)."""
        with self._lock:
            self._drops[name] = {"match": match, "remaining": times}

    def _dropped(self, name: str, message) -> bool:
        with self._lock:
            drop = self._drops.get(name)
            if drop is None or not drop["match"](message):
                return False
            drop["remaining"] -= 1
            if drop["remaining"] <= 0:
                self._drops.pop(name, None)
        logger.warning("test fault: {} to {} dropped", type(message).__name__, name)
        return True

    def maybe_raise_fault(self, name: str, message) -> None:
        fault = self._faults.get(name)
        if not fault or type(message).__name__ != fault["type"]:
            return
        with self._lock:
            fault["remaining"] -= 1
            if fault["remaining"] <= 0:
                self._faults.pop(name, None)
        raise InjectedFault(f"injected fault in {name} on {type(message).__name__}")
