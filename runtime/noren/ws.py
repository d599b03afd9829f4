"""NorenOMS WebSocket client: order updates (`om`) and touchline quotes (`tk`/`tf`) in a daemon thread.

One connection at a time. Each connection attempt authenticates with FRESH credentials (so a re-login by
the REST client is picked up), waits for the `ck` (or `ak` for OAuth) ack with `s == "OK"`, subscribes to
order updates (`{"t":"o"}`) and re-sends the remembered touchline subscriptions. Heartbeat: WebSocket ping
frames with payload `{"t":"h"}` every `heartbeat_s`. Once the server has been seen answering pings, a
silence of 3 heartbeats counts as a dead connection. On close/error it reconnects with capped exponential
backoff plus jitter; the backoff is reset after a successful authentication.

Callbacks run on the WebSocket thread; an exception in a callback is logged and never kills the thread.
`on_state` receives "connected", "disconnected" and "auth_failed".

Touchline: the last lp / uc / lc / ti / ls of every subscribed instrument are kept (`touchline(key)`), and
trusted only from the `tk` snapshot of the current connection on, while that connection is up and heard from.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

import websocket
from loguru import logger
from pydantic import ValidationError

from messages.noren import WsOrderUpdate, WsTouchline, touch_fields

AuthMode = Literal["quickauth", "oauth"]

STATE_CONNECTED = "connected"
STATE_DISCONNECTED = "disconnected"
STATE_AUTH_FAILED = "auth_failed"


class _Credentials(Protocol):
    uid: str
    actid: str
    token: str


class _Redacted(str):
    __slots__ = ()

    def __repr__(self) -> str:
        return "'<redacted>'"


@dataclass(frozen=True)
class Touch:
    """What the touchline last said of one instrument (None: not said, or blank)."""

    lp: float | None = None
    uc: float | None = None
    lc: float | None = None
    ti: float | None = None
    ls: int | None = None


class TouchlineBook:
    """The latest touchline values per `EXCH|TOKEN` (written by the WebSocket thread, read by any).

    A touchline sends one full `tk` snapshot per subscription and then `tf` deltas of the fields that changed, so
    a value is known only from a snapshot on: a delta without one is ignored, a malformed push forgets the
    instrument (a change may have been lost), and `clear()` (a connection ended or began) forgets everything."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._touch: dict[str, Touch] = {}

    def apply(self, message: dict[str, Any]) -> bool:
        """Take one `tk` / `tf` push. False when it was malformed (its instrument is forgotten)."""
        key = f"{message.get('e')}|{message.get('tk')}"
        try:
            fields = touch_fields(message)
        except (TypeError, ValueError):
            self.drop([key])
            return False
        with self._lock:
            if message.get("t") == "tk":
                self._touch[key] = Touch(**fields)
            elif fields and (known := self._touch.get(key)) is not None:
                self._touch[key] = replace(known, **fields)
        return True

    def get(self, key: str) -> Touch | None:
        return self._touch.get(key)

    def drop(self, keys: list[str]) -> None:
        with self._lock:
            for key in keys:
                self._touch.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._touch.clear()


class NorenWebSocket:
    """See the module docstring."""

    def __init__(
        self,
        ws_url: str,
        credentials: Callable[[], _Credentials | None],
        *,
        auth: AuthMode = "quickauth",
        on_order: Callable[[WsOrderUpdate], None],
        on_quote: Callable[[WsTouchline], None] | None = None,
        on_state: Callable[[str], None] | None = None,
        heartbeat_s: float = 3.0,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 5.0,
        connect_timeout_s: float = 5.0,
        auth_timeout_s: float = 5.0,
    ) -> None:
        if auth not in ("quickauth", "oauth"):
            raise ValueError(f"auth must be 'quickauth' or 'oauth', not {auth!r}")
        if not ws_url:
            raise ValueError("ws_url is empty")
        self.ws_url = ws_url
        self.auth: AuthMode = auth
        self._credentials = credentials
        self._on_order = on_order
        self._on_quote = on_quote
        self._on_state = on_state
        self.heartbeat_s = float(heartbeat_s)
        self.backoff_initial_s = float(backoff_initial_s)
        self.backoff_max_s = float(backoff_max_s)
        self.connect_timeout_s = float(connect_timeout_s)
        self.auth_timeout_s = float(auth_timeout_s)
        self._poll_s = max(0.02, min(0.25, self.heartbeat_s / 4))

        self.connected = threading.Event()
        self._stop = threading.Event()
        self._wake = threading.Event()  # cuts a reconnect backoff short (stop / retry_now)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # guards _ws, _authed, _subs
        self._ws: websocket.WebSocket | None = None
        self._authed = False
        self._subs: dict[str, None] = {}  # ordered set of touchline keys ("NFO|35001")
        self.connects = 0  # successful authentications so far (diagnostics)
        self._last_rx = 0.0
        self._pong_seen = False
        self._book = TouchlineBook()
        # Pings go out every heartbeat and the server answers, so a live connection is never quieter than this.
        self._quiet_s = 2 * self.heartbeat_s

    # ------------------------------------------------------------------------------------------------
    # Public API
    # ------------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the connection thread (no-op if it is already running)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._wake.clear()
        self._thread = threading.Thread(target=self._run, name="noren-ws", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Close the connection and join the thread. Idempotent; safe to call from a callback."""
        self._stop.set()
        self._wake.set()
        with self._lock:
            ws = self._ws
        if ws is not None:
            ws.abort()  # wakes the thread blocked in recv
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
            if thread.is_alive():
                logger.warning("noren ws thread did not stop within {:.1f} s", timeout_s)

    def retry_now(self) -> None:
        """Skip the current reconnect backoff (e.g. right after a re-login made fresh credentials available)."""
        self._wake.set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def subscribe_touchline(self, keys: list[str]) -> None:
        """Subscribe touchline for `EXCH|TOKEN` keys; remembered and re-sent after every reconnect."""
        with self._lock:
            new = [key for key in keys if key and key not in self._subs]
            for key in new:
                self._subs[key] = None
            if new and self._authed and self._ws is not None:
                self._send_locked(self._ws, {"t": "t", "k": "#".join(new)})

    def unsubscribe_touchline(self, keys: list[str]) -> None:
        with self._lock:
            gone = [key for key in keys if key in self._subs]
            for key in gone:
                del self._subs[key]
            self._book.drop(gone)  # no more updates will come: its last value would go stale unnoticed
            if gone and self._authed and self._ws is not None:
                self._send_locked(self._ws, {"t": "u", "k": "#".join(gone)})

    def touchline(self, key: str) -> Touch | None:
        """The touchline of `key` (`EXCH|TOKEN`) if it can be trusted now, else None.

        Trusted: its `tk` came on the current connection, which is still up and has been heard from (a frame or
        a pong) within two heartbeats. A touchline pushes changes only, so while the feed is up an old value is
        the current one; a value from before a reconnect is never used (changes during the gap were lost)."""
        if not self.connected.is_set() or time.monotonic() - self._last_rx > self._quiet_s:
            return None
        return self._book.get(key)

    @property
    def subscriptions(self) -> list[str]:
        with self._lock:
            return list(self._subs)

    # ------------------------------------------------------------------------------------------------
    # The connection thread
    # ------------------------------------------------------------------------------------------------

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                authed = self._connection_once()
            except Exception:  # noqa: BLE001 - the thread must survive anything
                logger.exception("noren ws connection loop error")
                authed = False
            if self._stop.is_set():
                break
            if authed:
                attempt = 0
            delay = min(self.backoff_max_s, self.backoff_initial_s * (2**attempt))
            delay = random.uniform(delay / 2, delay)
            attempt = min(attempt + 1, 30)
            logger.debug("noren ws reconnecting in {:.2f} s", delay)
            self._wake.wait(delay)
            self._wake.clear()
        logger.debug("noren ws thread stopped")

    def _connection_once(self) -> bool:
        """One connection: connect, authenticate, pump messages until it ends. True if it authenticated."""
        creds = self._fresh_credentials()
        if creds is None:
            self._emit_state(STATE_AUTH_FAILED)
            return False
        try:
            # No pure-Python UTF-8 check of every frame (about 0.2 ms per order update): _recv's decode and
            # json.loads still refuse invalid text.
            ws = websocket.create_connection(
                self.ws_url, timeout=self.connect_timeout_s, enable_multithread=True, skip_utf8_validation=True
            )
        except Exception as exc:  # noqa: BLE001 - any connect failure just means "try again later"
            logger.debug("noren ws connect failed: {}", type(exc).__name__)
            return False
        with self._lock:
            self._ws = ws
        if self._stop.is_set():  # stop() may have run before _ws was published
            self._close(ws)
            return False
        authed = False
        try:
            ws.settimeout(self._poll_s)
            if not self._authenticate(ws, creds):
                return False
            authed = True
            self._pump(ws)
        except (websocket.WebSocketException, OSError) as exc:
            if not self._stop.is_set():
                logger.info("noren ws connection lost: {}", type(exc).__name__)
        finally:
            with self._lock:
                self._ws = None
                self._authed = False
                self._book.clear()  # whatever changed from now until the next tk is unknown
            was_connected = self.connected.is_set()
            self.connected.clear()
            self._close(ws)
            if was_connected:
                self._emit_state(STATE_DISCONNECTED)
        return authed

    def _fresh_credentials(self) -> _Credentials | None:
        try:
            creds = self._credentials()
        except Exception as exc:  # noqa: BLE001
            logger.warning("noren ws credentials unavailable: {}", type(exc).__name__)
            return None
        if creds is None or not getattr(creds, "token", None):
            logger.warning("noren ws has no session to authenticate with")
            return None
        return creds

    def _authenticate(self, ws: websocket.WebSocket, creds: _Credentials) -> bool:
        uid = str(creds.uid)
        actid = str(getattr(creds, "actid", None) or uid)
        if self.auth == "oauth":
            hello = {"t": "a", "uid": uid, "actid": actid, "source": "API", "accesstoken": str(creds.token)}
            ack_type = "ak"
        else:
            hello = {"t": "c", "uid": uid, "actid": actid, "susertoken": str(creds.token), "source": "API"}
            ack_type = "ck"
        payload = _Redacted(json.dumps(hello))
        hello.clear()
        ws.send(payload)
        deadline = time.monotonic() + self.auth_timeout_s
        while not self._stop.is_set():
            if time.monotonic() > deadline:
                logger.warning("noren ws: no {} ack within {:.1f} s", ack_type, self.auth_timeout_s)
                return False
            message = self._recv(ws)
            if message is None:
                continue
            kind = message.get("t")
            if kind in ("ck", "ak"):
                if str(message.get("s", "")).upper() == "OK":
                    break
                logger.warning("noren ws authentication refused ({}: s={!r})", kind, message.get("s"))
                self._emit_state(STATE_AUTH_FAILED)
                return False
            self._dispatch(message)
        else:
            return False

        with self._lock:
            self._authed = True
            self._book.clear()  # a new connection: only its own tk snapshots count
            self._send_locked(ws, {"t": "o", "actid": actid})
            if self._subs:
                self._send_locked(ws, {"t": "t", "k": "#".join(self._subs)})
        self.connects += 1
        logger.info("noren ws connected as {}", uid)
        self._emit_state(STATE_CONNECTED)  # before the event: whoever wakes on `connected` sees the state
        self.connected.set()
        return True

    def _pump(self, ws: websocket.WebSocket) -> None:
        last_ping = time.monotonic()
        self._last_rx = time.monotonic()
        self._pong_seen = False
        dead_after = max(3 * self.heartbeat_s, self.heartbeat_s + 1.0)
        while not self._stop.is_set():
            now = time.monotonic()
            if now - last_ping >= self.heartbeat_s:
                ws.ping('{"t":"h"}')
                last_ping = now
            if self._pong_seen and now - self._last_rx > dead_after:
                logger.warning("noren ws: no traffic for {:.1f} s, reconnecting", now - self._last_rx)
                return
            message = self._recv(ws)
            if message is not None:
                self._dispatch(message)

    def _recv(self, ws: websocket.WebSocket) -> dict[str, Any] | None:
        """One frame: a decoded JSON object, or None (timeout, control frame, unparseable text)."""
        try:
            opcode, frame = ws.recv_data_frame(control_frame=True)
        except websocket.WebSocketTimeoutException:
            return None
        self._last_rx = time.monotonic()
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            raise websocket.WebSocketConnectionClosedException("closed by server")
        if opcode == websocket.ABNF.OPCODE_PONG:
            self._pong_seen = True
            return None
        if opcode not in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
            return None
        data = frame.data
        try:
            message = json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)
        except (ValueError, UnicodeDecodeError):
            logger.warning("noren ws: unparseable frame ({} bytes)", len(data))
            return None
        if not isinstance(message, dict):
            logger.warning("noren ws: unexpected frame of type {}", type(message).__name__)
            return None
        return message

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("t")
        if kind == "om":
            try:
                update = WsOrderUpdate.model_validate(message)
            except ValidationError as exc:
                logger.warning("noren ws: unparseable om for {}: {}", message.get("norenordno"), exc.error_count())
                return
            self._callback("on_order", self._on_order, update)
        elif kind in ("tk", "tf"):
            key = f"{message.get('e')}|{message.get('tk')}"
            with self._lock:  # only subscribed keys: a late push for one unsubscribed meanwhile would go stale
                malformed = key in self._subs and not self._book.apply(message)
            if malformed:
                logger.warning("noren ws: malformed {} for {}; its touchline is not used until the next connection",
                               kind, key)
            if self._on_quote is None:
                return
            try:
                quote = WsTouchline.model_validate(message)
            except ValidationError:
                logger.warning("noren ws: unparseable {} for {}|{}", kind, message.get("e"), message.get("tk"))
                return
            self._callback("on_quote", self._on_quote, quote)
        elif kind in ("ok", "uk", "ck", "ak"):
            logger.debug("noren ws ack {}", kind)
        else:
            logger.debug("noren ws: ignored message type {!r}", kind)

    # ------------------------------------------------------------------------------------------------
    # Helpers
    # ------------------------------------------------------------------------------------------------

    @staticmethod
    def _send_locked(ws: websocket.WebSocket, message: dict[str, Any]) -> None:
        try:
            ws.send(json.dumps(message))
        except (websocket.WebSocketException, OSError) as exc:
            # The reader loop will notice the broken connection and reconnect (re-sending subscriptions).
            logger.debug("noren ws send failed: {}", type(exc).__name__)

    @staticmethod
    def _close(ws: websocket.WebSocket) -> None:
        try:
            ws.abort()
            ws.shutdown()
        except Exception as exc:  # noqa: BLE001 - closing a dead socket may fail in many ways
            logger.debug("noren ws close: {}", type(exc).__name__)

    def _callback(self, name: str, func: Callable[[Any], None], arg: Any) -> None:
        try:
            func(arg)
        except Exception:  # noqa: BLE001 - a callback must never kill the thread
            logger.exception("noren ws {} callback raised", name)

    def _emit_state(self, state: str) -> None:
        if self._on_state is not None:
            self._callback("on_state", self._on_state, state)
