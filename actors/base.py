"""The base of every actor: dispatches each message by its type through the actor's HANDLERS table, and
reports its death to the supervisor with the message it was handling and the messages still queued, so that
a restart loses nothing. Not an actor itself."""

from __future__ import annotations

import queue
from typing import ClassVar

import pykka
from loguru import logger


class UnknownMessage(TypeError):
    """An actor was sent a message type it does not handle (a programming error); raised to an asker."""


class _Inbox(queue.Queue):
    """The actor's mailbox, remembering the envelope taken last: whether someone waits for the answer."""

    current = None

    def _get(self):
        self.current = super()._get()
        return self.current


class SupervisedActor(pykka.ThreadingActor):
    registry_name = "?"
    # Message type -> name of the method that handles it. Every actor declares its whole protocol here.
    HANDLERS: ClassVar[dict[type, str]] = {}

    def __init__(self, registry):
        super().__init__()
        self.registry = registry
        self._current = None
        # Bound once: dispatch is one dict lookup on the exact type (no isinstance chain, no reflection).
        self._handlers = {kind: getattr(self, name) for kind, name in self.HANDLERS.items()}

    @staticmethod
    def _create_actor_inbox():
        return _Inbox()

    def on_receive(self, message):
        self._current = message
        result = self.handle(message)
        self._current = None
        return result

    def handle(self, message):
        handler = self._handlers.get(type(message))
        if handler is None:
            return self._unknown(message)
        return handler(message)

    def _unknown(self, message):
        envelope = self.actor_inbox.current
        asked = envelope is not None and envelope.message is message and envelope.reply_to is not None
        logger.error("{} ({}) got an unknown message {} ({}); {}", type(self).__name__, self.registry_name,
                     type(message).__name__, "asked" if asked else "told",
                     "the asker gets UnknownMessage" if asked else "dropped")
        if asked:
            raise UnknownMessage(f"{self.registry_name} does not handle {type(message).__name__}")
        return None

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
