"""A daemon thread that tells an actor a Tick every interval (pykka has no timers)."""

from __future__ import annotations

import threading

import pykka

from messages.commands import Tick


class Ticker:
    def __init__(self, ref: pykka.ActorRef, interval_s: float, name: str = "tick"):
        self.ref = ref
        self.interval_s = interval_s
        self.name = name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"ticker-{name}", daemon=True)

    def start(self) -> "Ticker":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.ref.tell(Tick(name=self.name))
            except pykka.ActorDeadError:
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=2)
