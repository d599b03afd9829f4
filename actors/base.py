"""The base of every actor: reports its death to the supervisor with the message it was handling and the
messages still queued, so that a restart loses nothing. Not an actor itself."""

from __future__ import annotations

import queue

import pykka


class SupervisedActor(pykka.ThreadingActor):
    registry_name = "?"

    def __init__(self, registry):
        super().__init__()
        self.registry = registry
        self._current = None

    def on_receive(self, message):
        self._current = message
        result = self.handle(message)
        self._current = None
        return result

    def handle(self, message):  # pragma: no cover - every actor overrides it
        raise NotImplementedError

    def on_failure(self, exception_type, exception_value, traceback) -> None:
        try:
            self.on_stop()  # release threads, sockets and timers; pykka does not call on_stop after a crash
        except Exception:  # noqa: BLE001 - cleanup of a dead actor must not stop its restart
            pass
        pending = []
        while True:
            try:
                pending.append(self.actor_inbox.get_nowait())
            except queue.Empty:
                break
        supervisor = self.registry.supervisor
        if supervisor is not None:
            supervisor.on_death(self.registry_name, exception_value, self._current, pending)
