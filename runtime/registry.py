"""Named actor references. Actors address each other by name so that a restarted actor is found again.

While an actor is down (between its death and its restart) messages told to it are parked here and handed
to the new actor, so a restart drops nothing.
"""

from __future__ import annotations

import threading
from collections import defaultdict

import pykka
from loguru import logger


class Registry:
    def __init__(self):
        self._refs: dict[str, pykka.ActorRef] = {}
        self._down: set[str] = set()
        self._parked: dict[str, list] = defaultdict(list)
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
