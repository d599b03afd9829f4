"""The broker session's state: when BrokerActor may log in, and what `GET /health` reports about the broker.

Plain logic (no actor). BrokerActor is its only writer; the listener reads `snapshot()` from its request
threads without asking any actor, so /health never waits on the broker.

A login the broker REFUSES (stat Not_Ok: wrong password, OTP, vendor code, app key, ...) is never retried in
the order path: the broker locks the account after a few wrong attempts. After a refusal at most
`max_attempts` logins are made in any `window_s` (refused ones count), spaced by `backoff_s`; until the
next one is due the session is "known refused" and orders fail at once (`SEND_FAILED:NOT_LOGGED_IN`).
A network failure is not a refusal: it keeps its caller's quick retry.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable

LOGGED_IN, LOGGING_IN, LOGGED_OUT = "logged_in", "logging_in", "logged_out"
WS_UP, WS_DOWN, WS_OFF = "up", "down", "off"

WINDOW_S = 15 * 60.0
MAX_ATTEMPTS = 3
BACKOFF_S = (60.0, 240.0)  # after the 1st and 2nd refusal; then the window decides


class SessionGate:
    """Thread-safe: written by BrokerActor (and its WebSocket thread), read by the listener."""

    def __init__(self, *, websocket: bool = True, window_s: float = WINDOW_S, max_attempts: int = MAX_ATTEMPTS,
                 backoff_s: tuple[float, ...] = BACKOFF_S, clock: Callable[[], float] = time.monotonic):
        self._lock = threading.Lock()
        self.window_s = window_s
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.clock = clock
        self.state = LOGGING_IN
        self.reason: str | None = "logging in to the broker"
        self.refused = False  # the last login was refused by the broker
        self.credentials = False  # ... and its emsg blamed the credentials
        self.refusals: deque[float] = deque()  # clock() of refused logins, within window_s
        self.next_try = 0.0
        self.logins = 0  # attempts made (diagnostics, tests)
        self.websocket = WS_DOWN if websocket else WS_OFF

    # ---- BrokerActor's side -----------------------------------------------------------------------

    def may_login(self) -> bool:
        """False while a refused login is backing off: no login may be attempted now."""
        with self._lock:
            return not self.refused or self.clock() >= self.next_try

    def wait_s(self) -> float:
        """Seconds until the next login may be attempted (0: now)."""
        with self._lock:
            return max(0.0, self.next_try - self.clock()) if self.refused else 0.0

    def attempting(self) -> None:
        with self._lock:
            self.logins += 1
            if not self.refused and self.state != LOGGED_IN:
                self.state, self.reason = LOGGING_IN, "logging in to the broker"

    def succeeded(self) -> bool:
        """The login worked. True when it ends a refusal (worth telling the operator)."""
        with self._lock:
            recovered = self.refused
            self.state, self.reason, self.refused, self.credentials = LOGGED_IN, None, False, False
            return recovered

    def refused_login(self, reason: str, *, credentials: bool) -> bool:
        """The broker refused the login. True for the first refusal of a run of them (notify once)."""
        with self._lock:
            now = self.clock()
            first = not self.refused
            while self.refusals and now - self.refusals[0] >= self.window_s:
                self.refusals.popleft()
            self.refusals.append(now)
            n = len(self.refusals)
            if n >= self.max_attempts:  # the window is full: the next try when its oldest refusal leaves it
                self.next_try = self.refusals[-self.max_attempts] + self.window_s
            else:
                self.next_try = now + self.backoff_s[min(n, len(self.backoff_s)) - 1]
            self.state, self.refused, self.credentials = LOGGED_OUT, True, credentials
            self.reason = f"broker login refused: {reason}"
            return first

    def failed(self, reason: str) -> None:
        """A login that did not reach a verdict (network, unexpected reply): not a refusal."""
        with self._lock:
            if not self.refused:
                self.state, self.reason = LOGGING_IN, f"broker login failed, retrying: {reason}"

    def lost(self, reason: str = "broker session expired; logging in again") -> None:
        """The session stopped working (Session Expired)."""
        with self._lock:
            if self.state == LOGGED_IN:
                self.state, self.reason = LOGGING_IN, reason

    def set_websocket(self, state: str) -> None:
        """The WebSocket's state as NorenWebSocket reports it (connected, disconnected, auth_failed)."""
        with self._lock:
            if self.websocket != WS_OFF:
                self.websocket = WS_UP if state == "connected" else WS_DOWN

    # ---- readers ----------------------------------------------------------------------------------

    def snapshot(self) -> dict:
        with self._lock:
            return {"broker": self.state, "websocket": self.websocket, "reason": self.reason,
                    "refused": self.refused, "credentials": self.credentials,
                    "retry_in_s": max(0.0, self.next_try - self.clock()) if self.refused else None,
                    "logins": self.logins}
