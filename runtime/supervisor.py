"""Restarts actors that die from an unexpected exception (pykka has no supervisor).

The dying actor hands over the message it was handling and its queued envelopes. The supervisor starts a
fresh actor from its factory (its on_start rebuilds state from the database), re-delivers the failed message
once, then the queued envelopes (asks keep their futures), then whatever was told while it was down. A
message that kills the actor twice is given up: an order it carried that was never sent ends FAILED
`INTERNAL_ERROR:<ACTOR>`, so nothing is dropped silently. Deaths are logged and notified.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable

import pykka
from loguru import logger

from messages.commands import Notify, OrdersRegistered, RiskCleared, SendLegs, TransitionOrder

MAX_RESTARTS_PER_MINUTE = 10


def orders_in(message) -> list:
    if isinstance(message, (OrdersRegistered, RiskCleared, SendLegs)):
        return list(message.orders)
    return []


class Supervisor:
    def __init__(self, registry, factories: dict[str, Callable[[], pykka.ActorRef]]):
        self.registry = registry
        self.factories = factories
        self.deaths: dict[str, deque] = {}
        self.failed_once: set[int] = set()
        self.stopping = False
        self.restarts = 0
        self._lock = threading.Lock()

    def on_death(self, name: str, exc: BaseException, message, pending: list) -> None:
        """Called in the dying actor's thread; the restart runs in its own thread."""
        self.registry.mark_down(name)
        logger.bind(event="supervisor", actor=name).error(
            "actor {} died handling {}: {!r}", name, type(message).__name__ if message is not None else "-", exc)
        if self.stopping:
            return
        threading.Thread(target=self._restart, args=(name, exc, message, pending), name=f"restart-{name}",
                         daemon=True).start()

    def _restart(self, name: str, exc: BaseException, message, pending: list) -> None:
        with self._lock:
            now = time.monotonic()
            recent = self.deaths.setdefault(name, deque())
            recent.append(now)
            while recent and now - recent[0] > 60:
                recent.popleft()
            if len(recent) > MAX_RESTARTS_PER_MINUTE:
                logger.critical("actor {} died {} times in a minute; not restarting it", name, len(recent))
                self.registry.tell("notifier", Notify(kind="supervisor", text=f"CRITICAL: {name} keeps dying "
                                                      f"({exc!r}); it is no longer restarted"))
                self._give_up(name, message)
                return
            ref = self.factories[name]()
            self.restarts += 1
            if message is not None:
                key = id(message)
                if key in self.failed_once:
                    self.failed_once.discard(key)
                    self._give_up(name, message)
                else:
                    self.failed_once.add(key)
                    ref.tell(message)  # once more, on fresh state
            for envelope in pending:
                ref.actor_inbox.put(envelope)
            self.registry.set(name, ref)  # also flushes what was told while it was down
        logger.bind(event="supervisor", actor=name).warning("actor {} restarted", name)
        self.registry.tell("notifier", Notify(kind="supervisor", text=f"Actor {name} died ({exc!r}) and was "
                                              f"restarted; its state was rebuilt"))

    def _give_up(self, name: str, message) -> None:
        for order in orders_in(message):
            logger.error("giving up on {} for order {} after it killed {} twice", type(message).__name__,
                         order.command_id, name)
            self.registry.tell("store", TransitionOrder(
                command_id=order.command_id, to_status="FAILED", expect_from=("CREATED",),
                tag=f"INTERNAL_ERROR:{name.upper()}", detail=f"{type(message).__name__} failed twice"))
