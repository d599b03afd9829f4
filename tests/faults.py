"""Test-only fault injection: a Registry that can make an actor raise on a message type or lose messages.

The service's own Registry has no fault hooks (nothing on the hot path of every message); tests that need
faults build the System with `registry=FaultyRegistry()` (conftest `make_system(registry=...)`).
"""

from __future__ import annotations

from typing import Callable

from loguru import logger

from runtime.registry import Registry


class InjectedFault(RuntimeError):
    """Raised inside an actor by FaultyRegistry.inject_fault."""


class FaultyRegistry(Registry):
    def __init__(self):
        super().__init__()
        self._faults: dict[str, dict] = {}
        self._drops: dict[str, dict] = {}

    def set(self, name: str, ref) -> None:
        # Every actor registered (a restarted one too) raises the injected faults inside its own thread, while
        # handling the message, exactly like a bug in its handler would. pykka 4 keeps the actor behind
        # ActorRef._actor_weakref; the wrapper is installed before any parked message is handed over.
        actor = ref._actor_weakref()
        if actor is not None and "on_receive" not in vars(actor):
            handle = actor.on_receive

            def on_receive(message, _name=name, _actor=actor, _handle=handle):
                _actor._current = message  # what the supervisor re-delivers to the restarted actor
                self._maybe_raise(_name, message)
                return _handle(message)

            actor.on_receive = on_receive
        super().set(name, ref)

    def tell(self, name: str, message) -> bool:
        if self._drops and self._dropped(name, message):
            return True
        return super().tell(name, message)

    def inject_fault(self, name: str, message_type: str, times: int = 1) -> None:
        """Make actor `name` raise on the next `times` messages of type `message_type`."""
        with self._lock:
            self._faults[name] = {"type": message_type, "remaining": times}

    def drop_messages(self, name: str, match: Callable[[object], bool], times: int = 1) -> None:
        """Lose the next `times` messages told to actor `name` for which `match` is true, as if they had never
        been sent (e.g. a WebSocket push that never arrived)."""
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

    def _maybe_raise(self, name: str, message) -> None:
        fault = self._faults.get(name)
        if not fault or type(message).__name__ != fault["type"]:
            return
        with self._lock:
            fault["remaining"] -= 1
            if fault["remaining"] <= 0:
                self._faults.pop(name, None)
        raise InjectedFault(f"injected fault in {name} on {type(message).__name__}")
