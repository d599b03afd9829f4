"""The paper exchange: a NorenOMS-compatible broker simulator on loopback (REST + WebSocket on one port).

    with PaperExchange(PaperConfig(fill_delay_ms=10), port=0) as exchange:
        api = NorenApi(host=exchange.rest_url, websocket=exchange.ws_url)

State (orders, positions, cash, order numbers) is kept in `state_path`: `[paper] state_file` if set, else the
`default_state_file` the starter passes (`oms run`: "<data_dir>/paper_state.json"; `serve_forever`, i.e.
`oms paper`: "./paper_state.json"); none when `[paper] persist = false` or nothing is given (tests).

`PaperExchange.start()` runs the server on its own asyncio loop in a daemon thread and returns once it is
listening; `serve_forever()` is the blocking form for `oms paper`. Control routes (`/paper/...`) drive
prices and faults; the helper methods below call the same code in-process.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loguru import logger

from runtime.config import PaperConfig
from runtime.paper.engine import Engine, OrderError, om_message
from runtime.paper.server import PaperServer, parse_body
from runtime.paper.state import PaperStateError

__all__ = ["Engine", "OrderError", "PaperExchange", "PaperServer", "PaperStateError", "om_message", "parse_body"]

DEFAULT_STATE_FILE = "paper_state.json"

_START_TIMEOUT_S = 10.0


class PaperExchange:
    """The paper exchange running on a background thread."""

    def __init__(
        self,
        config: PaperConfig | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        seed: int | None = None,
        default_state_file: str | Path | None = None,
    ) -> None:
        overrides = {name: value for name, value in (("host", host), ("port", port), ("seed", seed)) if value is not None}
        self.config = (config or PaperConfig()).model_copy(update=overrides)
        self._default_state_file = default_state_file
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: PaperServer | None = None
        self._port: int | None = None

    @property
    def state_path(self) -> Path | None:
        """The state file in use (absolute), or None when nothing is persisted."""
        if not self.config.persist:
            return None
        chosen = self.config.state_file or self._default_state_file
        return Path(chosen).absolute() if chosen else None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> PaperExchange:
        """Start listening (idempotent); returns only once the port is bound. Raises OSError if it cannot bind."""
        with self._lock:
            if self._thread is not None:
                return self
            ready = threading.Event()
            failure: list[BaseException] = []
            thread = threading.Thread(target=self._run, args=(ready, failure), name="paper-exchange", daemon=True)
            thread.start()
            if not ready.wait(_START_TIMEOUT_S):
                raise RuntimeError("paper exchange did not start in time")
            if failure:
                thread.join()
                raise failure[0]
            self._thread = thread
            return self

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        server = None
        try:
            server = PaperServer(self.config, self.state_path)
            self._port = loop.run_until_complete(server.start(self.config.host, self.config.port))
        except BaseException as exc:  # noqa: BLE001 - handed to start()'s caller
            failure.append(exc)
            if server is not None:
                loop.run_until_complete(server.stop())
            loop.close()
            ready.set()
            return
        self._loop, self._server = loop, server
        ready.set()
        try:
            loop.run_forever()
        finally:
            try:
                loop.run_until_complete(server.stop())
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    def stop(self) -> None:
        """Stop listening, close every socket and release held replies (idempotent)."""
        with self._lock:
            thread, loop = self._thread, self._loop
            if thread is None or loop is None:
                return
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)  # bounded: a stuck shutdown must not hang the caller (daemon thread)
            if thread.is_alive():
                logger.warning("paper exchange thread did not stop within 10 s")
            self._thread = self._loop = self._server = None

    def serve_forever(self) -> None:
        """Start, block until SIGINT/SIGTERM (or `stop()` from another thread), then stop."""
        done = threading.Event()
        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, lambda *_: done.set())
        if self._default_state_file is None:
            self._default_state_file = DEFAULT_STATE_FILE  # `oms paper`: the current directory
        try:
            try:
                self.start()
            except PaperStateError as exc:
                logger.error("{}", exc)
                raise SystemExit(2) from None  # a refused start: one readable line, exit 2
            logger.info("paper exchange serving REST {} and WS {} (state: {})", self.rest_url, self.ws_url,
                        self.state_path or "not persisted")
            thread = self._thread
            while not done.is_set() and thread is not None and thread.is_alive():
                done.wait(0.5)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self.stop()

    def __enter__(self) -> PaperExchange:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # ------------------------------------------------------------------ addresses

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("paper exchange not started")
        return self._port

    @property
    def base_url(self) -> str:
        host = self.config.host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"{self.base_url}/NorenWClientTP/"

    @property
    def ws_url(self) -> str:
        return "ws" + self.base_url[len("http"):] + "/NorenWSTP/"

    # ------------------------------------------------------------------ in-process control (same as /paper/...)

    def _call(self, fn: Callable[[PaperServer], Any]) -> Any:
        loop, server = self._loop, self._server
        if loop is None or server is None:
            raise RuntimeError("paper exchange not started")

        async def run():
            result = fn(server)
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(run(), loop).result(_START_TIMEOUT_S)

    def set_ltp(self, exch: str, tsym: str, lp: float, *, walk: bool = False) -> dict:
        """Like POST /paper/ltp: set (and pin, unless walk) a last price; matching runs at once."""
        return self._call(lambda server: server.set_ltp({"exch": exch, "tsym": tsym, "lp": lp, "walk": walk}))

    def set_faults(self, **faults: Any) -> dict:
        """Like POST /paper/faults, e.g. set_faults(http_500=2) or set_faults(drop_websockets=True)."""
        return self._call(lambda server: server.apply_faults(faults))

    def reset_faults(self) -> dict:
        """Like POST /paper/faults/reset."""

        def reset(server: PaperServer) -> dict:
            server.reset_faults()
            return server.fault_state()

        return self._call(reset)

    def set_users(self, **users: str | None) -> dict:
        """Like POST /paper/users: change (or drop, None) the password QuickAuth checks for a uid."""
        return self._call(lambda server: server.set_users(users))

    def logins(self) -> dict[str, dict[str, int]]:
        """Like GET /paper/logins: QuickAuth attempts and refusals per uid."""
        return self._call(lambda server: {uid: dict(c) for uid, c in server.logins.items()})

    def orders(self) -> list[dict]:
        """Like GET /paper/orders: every order of every account."""
        return self._call(lambda server: server.engine.all_orders())
