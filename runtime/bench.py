"""`oms bench`: end-to-end latency, throughput, burst, floor and soak figures of the whole service.

The paper exchange (`python -m runtime.cli paper`) and the service (`python -m runtime.cli run --config <generated>`)
run as separate processes on 127.0.0.1, the service with `broker.mode = "shoonya"` pointed at the paper process,
exactly as it would run against the live broker. Rate and risk limits are lifted, `paper.fill_delay_ms = 0`, the
paper price walk is off (`walk_volatility = 0`: MARKET orders fill at once, the clock does no per-tick work), and
every alert is an ENTRY of its own strategy on instruments from a shared pool that the warm-up has traded (plus a
few on new instruments, reported apart), so no blocker ever stops one. Each phase starts a
fresh service on a fresh data_dir and a fresh paper account, so phases do not inherit each other's state.

Clocks: every timestamp is `time.monotonic()` (CLOCK_MONOTONIC, shared by all processes on Linux):
  - the bench stamps just before it writes a request and when the answer is read;
  - the service's JSON log lines carry `mono` (runtime/logs.py), so `<data_dir>/logs/events.jsonl` gives when the
    alert was accepted (after the registration commit) and when each order event was committed and published;
  - the paper exchange stamps `arrived_mono` (PlaceOrder reached its handler) and `filled_mono` (final fill) per
    order, exposed in GET /paper/orders.

Figures (latencies as p50 / p99 / max in ms):
  ack_ms                     client: request written -> 202 read (keep-alive connection)
  internal_ms                alert received -> PlaceOrder arrived at the exchange: from the service's own receipt
                             stamp (`received_mono` on the "accepted" alert line, taken when the listener got the
                             request), or from the bench's write if a service logs none (an upper bound)
  fill_to_executed_ms_ws     exchange final fill -> EXECUTED committed (the EXECUTED event's `mono`), WebSocket
  fill_to_executed_ms_poll   the same with use_websocket = false and poll_interval_s = 1.0
  throughput_orders_per_s    highest sustained offered rate (stepped up) whose internal p99 stays under 50 ms,
                             with every order delivered and the offered rate actually achieved by the bench
  burst                      B legs as alerts of up to 5 legs from as many concurrent clients, written at once: seconds until every 202 (all
                             legs CREATED, durably) and until every leg is EXECUTED
  floor                      one durable SQLite commit (WAL, synchronous=FULL, storage/db.py's pragmas) and one
                             loopback HTTP round trip (UserDetails over a keep-alive connection), measured here
  internal_over_floor        internal_ms p50 / (2 * commit_ms + http_rtt_ms)
  --soak                     rss_mb_start / rss_mb_end (VmRSS of the service after warm-up and after the soak
                             orders) and recovery_s (`oms run` start -> /health 200 with those orders in the DB)

Every loop is bounded in count and in time; nothing listens or connects beyond 127.0.0.1.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
SECRET = "bench-secret"
HUGE = 1_000_000_000.0
P99_LIMIT_MS = 50.0
SYMBOL_POOL = 64  # instruments the latency, burst and sweep alerts share (each warm-up covers them all)
SOAK_POOL = 200  # strategies the soak cycles through (ENTRY, then EXIT, ...): open positions stay bounded
BURST_LEGS_PER_ALERT = 5  # a burst is multi-leg alerts (straddles, condors) from many strategies at one candle close
SWEEP_RATES = (50, 100, 200, 400, 800, 1600, 3200)  # the doubling ladder; its last entry is the ceiling
JSON_KEYS = ("ack_ms", "internal_ms", "fill_to_executed_ms_ws", "fill_to_executed_ms_poll",
             "throughput_orders_per_s", "burst", "floor", "internal_over_floor")
SOAK_KEYS = ("rss_mb_start", "rss_mb_end", "recovery_s")

TARGETS = {
    "internal_p50_ms": 2.0,
    "internal_p99_ms": 10.0,
    "ws_p50_ms": 25.0,
    "ws_vs_poll": 20.0,
    "throughput": 500.0,
    "burst_created_s": 1.0,
    "rss_growth": 0.10,
    "recovery_s": 3.0,
}


@dataclass
class Options:
    orders: int = 2000
    rate: float = 100.0
    burst: int = 500
    watch: str | None = None  # None: both (ws for everything, plus a poll phase for fill_to_executed_ms_poll)
    json_path: str | None = None
    soak: bool = False
    soak_orders: int = 100_000
    soak_rate: float | None = None
    quick: bool = False
    keep: bool = False
    step_s: float = 4.0
    sweep_budget_s: float = 150.0
    warmup: int = 100
    poll_orders: int = 200
    dashboards: int = 0  # dashboard tabs open (polling the live orders view) during the latency run


# ---------------------------------------------------------------------------------------------------- output

def _say(text: str) -> None:
    """Progress (stderr): the figures themselves go to stdout at the end."""
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def summary(values_s: list[float]) -> dict | None:
    """p50 / p99 / max in ms of intervals given in seconds (nearest-rank percentiles)."""
    values = [v * 1000.0 for v in values_s if v is not None]
    if not values:
        return None
    return {"p50": round(_pct(values, 0.50), 3), "p99": round(_pct(values, 0.99), 3), "max": round(max(values), 3)}


def _median(values: list[float]) -> float:
    return _pct(values, 0.5)


# ---------------------------------------------------------------------------------------------------- processes

def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


DASHBOARD_PASSWORD = "bench-dashboard-password"
DASHBOARD_POLL_S = 1.0  # what an open Orders page does (actors/dashboard/static/app.js)


class DashboardViewers:
    """`n` dashboard tabs open on the Orders page while orders flow: each logs in and polls the live endpoint
    every second, as the page's script does. Bounded: the threads stop with the phase."""

    def __init__(self, port: int, n: int):
        self.port, self.n = port, n
        self.stop_event = threading.Event()
        self.polls = self.errors = 0
        self.threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def __enter__(self) -> "DashboardViewers":
        # Log every tab in before the measured run: a dashboard *open* is what is measured, not its opening.
        sessions = [self._login() for _ in range(self.n)]
        for i, session in enumerate(sessions):
            if session is None:
                continue
            thread = threading.Thread(target=self._poll, args=(session,), name=f"dashboard-{i}", daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=10)

    def _login(self):
        import re

        import requests

        base = f"http://{HOST}:{self.port}"
        session = requests.Session()
        try:
            page = session.get(f"{base}/ui/login", timeout=10).text
            token = re.search(r'name="csrf" value="([^"]+)"', page)
            session.post(f"{base}/ui/login", data={"password": DASHBOARD_PASSWORD,
                                                   "csrf": token.group(1) if token else ""}, timeout=10)
            session.get(f"{base}/ui/", timeout=10)  # the Orders page, as a tab shows it
        except requests.RequestException:
            with self._lock:
                self.errors += 1
            return None
        return session

    def _poll(self, session) -> None:
        import requests

        base = f"http://{HOST}:{self.port}"
        # As the page does: it shows the rows it was rendered with, then asks only for what changed since.
        since = datetime.now(timezone.utc).isoformat(timespec="microseconds")
        while not self.stop_event.wait(DASHBOARD_POLL_S):
            try:
                reply = session.get(f"{base}/ui/api/orders", params={"since": since}, timeout=10)
                ok = reply.status_code == 200
                if ok:
                    since = reply.json().get("since", since)
            except (requests.RequestException, ValueError):
                ok = False
            with self._lock:
                self.polls += ok
                self.errors += not ok


def write_config(path: Path, *, data_dir: Path, port: int, paper_port: int, user_id: str, websocket: bool,
                 poll_interval_s: float) -> None:
    path.write_text(f"""# generated by `oms bench`
[service]
host = "{HOST}"
port = {port}
data_dir = {json.dumps(str(data_dir))}
client_id = "bench"

[webhook]
secret_key = "{SECRET}"

[operator]
password = "{DASHBOARD_PASSWORD}"

[broker]
mode = "shoonya"
rest_url = "http://{HOST}:{paper_port}/NorenWClientTP/"
ws_url = "ws://{HOST}:{paper_port}/NorenWSTP/"
user_id = "{user_id}"
orders_per_second = {HUGE}
orders_per_minute = {HUGE}
use_websocket = {"true" if websocket else "false"}
poll_interval_s = {poll_interval_s}

[paper]
host = "{HOST}"
port = {paper_port}
fill_delay_ms = 0
walk_volatility = 0.0
persist = false  # every run starts a fresh exchange; state-file saves would only add noise to the figures

[risk]
max_entries_per_second = {HUGE}
max_entries_per_minute = {HUGE}
enforce_trading_hours = false   # live mode would enforce them; the bench runs at any hour
""", encoding="utf-8")


class Proc:
    """A child `python -m runtime.cli ...` in its own session; stopped by its pid only."""

    def __init__(self, name: str, args: list[str], workdir: Path):
        self.name = name
        self.log = workdir / f"{name}.log"
        with self.log.open("ab") as fh:
            self.popen = subprocess.Popen([sys.executable, "-m", "runtime.cli", *args], stdout=fh,
                                          stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True)
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def rss_mb(self) -> float | None:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024.0, 1)
        except OSError:
            return None
        return None

    def stop(self, timeout: float = 30.0) -> float:
        """SIGTERM, wait (SIGKILL after `timeout`). Returns the seconds it took."""
        t0 = time.monotonic()
        if self.alive():
            try:
                os.kill(self.pid, signal.SIGTERM)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                _say(f"{self.name} did not stop in {timeout:.0f}s; killing pid {self.pid}")
                os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(10)
            except ProcessLookupError:
                pass
        return time.monotonic() - t0

    def tail_log(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def wait_http(port: int, path: str, timeout: float, proc: Proc | None = None) -> float:
    """Poll GET path until 200; returns the time it answered (monotonic). Raises RuntimeError on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}) before {path} answered:\n"
                               f"{proc.tail_log()}")
        conn = http.client.HTTPConnection(HOST, port, timeout=1.0)
        try:
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return time.monotonic()
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
        time.sleep(0.01)
    raise RuntimeError(f"127.0.0.1:{port}{path} did not answer 200 within {timeout:.0f}s")


# ---------------------------------------------------------------------------------------------------- HTTP client

class Conn:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1 (http.client: far less client overhead than requests)."""

    def __init__(self, port: int, timeout: float = 15.0):
        self.port = port
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        for attempt in (1, 2):  # a second try only for a keep-alive connection the server had closed
            if self.conn is None:
                self.conn = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                response = self.conn.getresponse()
                data = response.read()
                if response.will_close:
                    self.close()
                return response.status, data
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def get_json(self, path: str):
        status, data = self.request("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path}: HTTP {status}")
        return json.loads(data)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def alert_body(tag: str, i: int, legs: int = 1, *, fresh_symbols: bool = False) -> bytes:
    """An ENTRY of its own strategy with `legs` BUY legs. The symbols come from a pool of SYMBOL_POOL instruments
    that the warm-up has traded, as a trader's strategies share a few dozen instruments: the first order on an
    instrument costs extra look-ups (SearchScrip, a first quote), which `fresh_symbols=True` measures apart.
    No blocker ever stops one: each alert is its own strategy, all legs are BUY (no cross-strategy conflict),
    and the guard does not block the legs of one alert against each other."""
    name = f"B{tag}{i}".upper().replace("-", "")  # real symbols are upper case (SearchScrip upper-cases them)
    leg = '{{"tradingsymbol":"{}-EQ","direction":"BUY","qty":1,"order_type":"MARKET","product_type":"MIS"}}'
    if fresh_symbols:
        symbols = [name] if legs == 1 else [f"{name}L{j}" for j in range(legs)]
    else:
        symbols = [f"BENCH{(i * legs + j) % SYMBOL_POOL}" for j in range(legs)]
    return (f'{{"secret_key":"{SECRET}","alert_id":"{tag}-{i}","strategy_name":"{name}",'
            f'"execution_type":"ENTRY","exchange":"NSE","legs":[{",".join(leg.format(s) for s in symbols)}]}}').encode()


def soak_body(i: int, pool: int) -> bytes:
    """The soak's alerts: a pool of strategies (each with its own symbol) taken in turn, ENTRY on the first pass,
    EXIT on the next, and so on, so the account's open positions stay bounded (at most `pool`) while the order
    count grows: memory growth then means a leak, not a bigger book. The caller keeps fewer than `pool` orders
    in flight, so each strategy's previous order is long settled when it comes round again: nothing is blocked."""
    k, lap = i % pool, i // pool
    name = f"SOAK{k}"
    side, kind = ("BUY", "ENTRY") if lap % 2 == 0 else ("SELL", "EXIT")
    return (f'{{"secret_key":"{SECRET}","alert_id":"soak-{i}","strategy_name":"{name}","execution_type":"{kind}",'
            f'"exchange":"NSE","legs":[{{"tradingsymbol":"{name}-EQ","direction":"{side}","qty":1,'
            f'"order_type":"MARKET","product_type":"MIS"}}]}}').encode()


@dataclass
class Shot:
    """One alert sent by the bench."""

    alert_id: str
    send: float = 0.0
    ack: float = 0.0
    status: int = 0
    command_ids: tuple[str, ...] = ()


class Window:
    """Back-pressure for the soak: at most `limit` orders sent and not yet terminal."""

    def __init__(self, limit: int, done: Callable[[], int]):
        self.limit = limit
        self.done = done
        self.sent = 0
        self.lock = threading.Lock()

    def acquire(self, stop_at: float) -> bool:
        while time.monotonic() < stop_at:
            with self.lock:
                if self.sent - self.done() < self.limit:
                    self.sent += 1
                    return True
            time.sleep(0.005)
        return False


def fire(port: int, tag: str, count: int, *, rate: float | None, connections: int, budget_s: float,
         window: Window | None = None, on_shot: Callable[[Shot], None] | None = None,
         legs: int | Callable[[int], int] = 1, body: Callable[[int], bytes] | None = None) -> list[Shot]:
    """Send `count` alerts (of `legs` legs, or `body(i)`) over `connections` keep-alive connections, open loop at
    `rate` per second (None: as fast as they go). Connections are opened (GET /health) before the clock starts.
    Bounded by `budget_s`."""
    shots = [Shot(f"{tag}-{i}") for i in range(count)]
    lock = threading.Lock()
    cursor = [0]
    connections = max(1, min(connections, count or 1))
    barrier = threading.Barrier(connections + 1)
    start = [0.0]
    headers = {"Content-Type": "application/json"}

    def worker() -> None:
        conn = Conn(port)
        try:
            try:
                conn.request("GET", "/health")
            except OSError:
                pass
            barrier.wait(30)
            t0 = start[0]
            stop_at = t0 + budget_s
            while True:
                with lock:
                    i = cursor[0]
                    if i >= count:
                        return
                    cursor[0] += 1
                if rate:
                    delay = t0 + i / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                if time.monotonic() > stop_at or (window is not None and not window.acquire(stop_at)):
                    return
                shot = shots[i]
                if body is not None:
                    payload = body(i)
                else:
                    payload = alert_body(tag, i, legs if isinstance(legs, int) else legs(i))
                shot.send = time.monotonic()
                try:
                    shot.status, data = conn.request("POST", "/webhook", payload, headers)
                except OSError:
                    shot.status, data = 0, b""
                shot.ack = time.monotonic()
                if shot.status in (200, 202):
                    try:
                        shot.command_ids = tuple(o["command_id"] for o in json.loads(data)["orders"])
                    except (ValueError, KeyError, TypeError):
                        pass
                if on_shot is not None:
                    on_shot(shot)
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, name=f"bench-{tag}-{k}", daemon=True) for k in range(connections)]
    for thread in threads:
        thread.start()
    start[0] = time.monotonic() + 0.01
    barrier.wait(30)
    deadline = time.monotonic() + budget_s + 30
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [s for s in shots if s.send]


# ---------------------------------------------------------------------------------------------------- event log

class EventTail:
    """Follows <data_dir>/logs/events.jsonl (across rotations) in a thread; keeps what the bench needs.

    details=True keeps per order the `mono` of every status it reached and per alert the accepted `mono`;
    details=False (the soak) parses only the terminal events (one line in five) and keeps their command ids."""

    def __init__(self, path: Path, details: bool = True):
        self.path = path
        self.details = details
        self.fh = None
        self.inode = None
        self.partial = ""
        self.lock = threading.Lock()
        self.events: dict[str, dict[str, float]] = {}  # command_id -> {to_status: mono}
        self.failed: dict[str, str] = {}  # command_id -> tag
        self.accepted: dict[str, float] = {}  # alert_id -> mono of the "accepted" alert event
        self.received: dict[str, float] = {}  # alert_id -> the service's own receipt stamp, when it logs one
        self.done: set[str] = set()  # command ids that reached EXECUTED or FAILED
        self.terminal = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-tail", daemon=True)

    def start(self) -> "EventTail":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(5)
        self.poll()
        if self.fh is not None:
            self.fh.close()
            self.fh = None

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.poll()
            except OSError:
                pass

    def poll(self) -> None:
        with self.lock:
            if self.fh is None:
                if not self.path.exists():
                    return
                self.fh = self.path.open(encoding="utf-8")
                self.inode = os.fstat(self.fh.fileno()).st_ino
            for _ in range(100_000):  # bounded: a rotation at most every 50 MB
                chunk = self.fh.read(1 << 20)
                if chunk:
                    self._feed(chunk)
                    continue
                try:
                    inode = os.stat(self.path).st_ino
                except FileNotFoundError:
                    return
                if inode == self.inode:
                    return
                self._feed(self.fh.read())  # rotated: finish the old file, then follow the new one
                self.fh.close()
                self.fh = self.path.open(encoding="utf-8")
                self.inode = os.fstat(self.fh.fileno()).st_ino

    def _feed(self, chunk: str) -> None:
        text = self.partial + chunk
        lines = text.split("\n")
        self.partial = lines.pop()
        for line in lines:
            if '"event": "order"' in line:
                terminal = '"to_status": "EXECUTED"' in line or '"to_status": "FAILED"' in line
                if not (terminal or self.details):
                    continue
                data = json.loads(line)
                cid = data.get("command_id")
                if terminal and cid not in self.done:
                    self.done.add(cid)
                    self.terminal += 1
                if data.get("to_status") == "FAILED":
                    self.failed[cid] = data.get("tag") or ""
                if self.details:
                    self.events.setdefault(cid, {}).setdefault(data.get("to_status"), data.get("mono"))
            elif self.details and '"event": "alert"' in line and '"outcome": "accepted"' in line:
                data = json.loads(line)
                self.accepted.setdefault(data.get("alert_id"), data.get("mono"))
                if isinstance(data.get("received_mono"), (int, float)):
                    self.received.setdefault(data.get("alert_id"), data["received_mono"])

    def terminal_count(self) -> int:
        return self.terminal

    def mono(self, command_id: str, status: str) -> float | None:
        return self.events.get(command_id, {}).get(status)

    def wait_terminal(self, command_ids: list[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        pending = list(command_ids)
        while time.monotonic() < deadline:
            with self.lock:
                pending = [c for c in pending if c not in self.done]
            if not pending:
                return True
            time.sleep(0.02)
        return False

    def wait_count(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.terminal >= count:
                return True
            time.sleep(0.05)
        return False


# ---------------------------------------------------------------------------------------------------- a service

@dataclass
class Service:
    """One `oms run` child on a fresh data_dir and paper account."""

    bench: "Bench"
    name: str
    websocket: bool
    poll_interval_s: float
    details: bool = True
    proc: Proc | None = None
    tail: EventTail | None = None
    port: int = 0
    data_dir: Path = field(default_factory=Path)
    config: Path = field(default_factory=Path)
    start_s: float | None = None

    def start(self) -> "Service":
        workdir = self.bench.workdir
        self.port = free_port()
        self.data_dir = workdir / f"data-{self.name}"
        self.config = workdir / f"config-{self.name}.toml"
        write_config(self.config, data_dir=self.data_dir, port=self.port, paper_port=self.bench.paper_port,
                     user_id=f"BENCH{self.name.upper().replace('-', '')}", websocket=self.websocket,
                     poll_interval_s=self.poll_interval_s)
        self.tail = EventTail(self.data_dir / "logs" / "events.jsonl", details=self.details).start()
        return self.restart()

    def restart(self) -> "Service":
        self.proc = Proc(f"service-{self.name}", ["run", "--config", str(self.config)], self.bench.workdir)
        self.bench.procs.append(self.proc)
        ready = wait_http(self.port, "/health", 120, self.proc)
        self.start_s = ready - self.proc.started
        return self

    def stop(self) -> float:
        took = self.proc.stop() if self.proc is not None else 0.0
        return took

    def close(self) -> None:
        self.stop()
        if self.tail is not None:
            self.tail.stop()

    def send(self, tag: str, count: int, *, rate: float | None, connections: int, budget_s: float,
             window: Window | None = None, on_shot=None, legs: int | Callable[[int], int] = 1,
             body: Callable[[int], bytes] | None = None) -> list[Shot]:
        return fire(self.port, tag, count, rate=rate, connections=connections, budget_s=budget_s, window=window,
                    on_shot=on_shot, legs=legs, body=body)

    def settle(self, shots: list[Shot], timeout: float) -> bool:
        ids = [c for s in shots for c in s.command_ids]
        return self.tail.wait_terminal(ids, timeout)

    def warm_up(self, count: int) -> None:
        if count <= 0:
            return
        shots = self.send(f"{self.name}-warm", count, rate=25.0, connections=4, budget_s=count / 25.0 * 2 + 30)
        self.settle(shots, 30 + count / 20)


# ---------------------------------------------------------------------------------------------------- the bench

@dataclass
class Sample:
    """Per order: the bench's stamps joined with the service's events and the exchange's stamps."""

    shot: Shot
    command_id: str
    received: float | None  # the service's receipt stamp (`received_mono` on the accepted alert line), if any
    arrived: float | None
    filled: float | None
    accepted: float | None
    sent_event: float | None
    executed: float | None
    failed: str | None

    @property
    def internal(self) -> float | None:
        """Receipt -> PlaceOrder arrival: from the service's own receipt stamp when it logs one, else from the
        moment the bench wrote the request (an upper bound: it adds the loopback hop and waitress's dispatch)."""
        if self.arrived is None:
            return None
        return self.arrived - (self.received if self.received is not None else self.shot.send)


class Bench:
    def __init__(self, options: Options):
        self.o = options
        self.workdir = Path(tempfile.mkdtemp(prefix="oms-bench-"))
        self.paper_port = free_port()
        self.paper: Proc | None = None
        self.paper_conn: Conn | None = None
        self.procs: list[Proc] = []
        self.results: dict = {key: None for key in JSON_KEYS}
        if options.soak:
            self.results.update({key: None for key in SOAK_KEYS})
        self.extra: dict = {}  # figures for the human table only (breakdowns, sweep steps, soak chunks)
        self.notes: list[str] = []

    # ---- the paper exchange ---------------------------------------------------------------------

    def start_paper(self) -> None:
        config = self.workdir / "config-paper.toml"
        write_config(config, data_dir=self.workdir / "unused", port=0, paper_port=self.paper_port, user_id="X",
                     websocket=True, poll_interval_s=2.0)
        self.paper = Proc("paper", ["paper", "--config", str(config), "--port", str(self.paper_port)], self.workdir)
        self.procs.append(self.paper)
        wait_http(self.paper_port, "/paper/health", 60, self.paper)
        self.paper_conn = Conn(self.paper_port, timeout=60)

    def paper_orders(self) -> dict[str, dict]:
        rows = self.paper_conn.get_json("/paper/orders")
        return {row.get("remarks"): row for row in rows if row.get("remarks")}

    def samples(self, service: Service, shots: list[Shot]) -> list[Sample]:
        rows = self.paper_orders()
        out = []
        for shot in shots:
            for cid in shot.command_ids:
                row = rows.get(cid, {})
                out.append(Sample(shot, cid, service.tail.received.get(shot.alert_id), row.get("arrived_mono"),
                                  row.get("filled_mono"),
                                  service.tail.accepted.get(shot.alert_id), service.tail.mono(cid, "SENT_TO_BROKER"),
                                  service.tail.mono(cid, "EXECUTED"), service.tail.failed.get(cid)))
        return out

    # ---- floor ----------------------------------------------------------------------------------

    def measure_floor(self) -> None:
        n = 30 if self.o.quick else 300
        path = self.workdir / "floor.db"
        db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        for pragma in ("journal_mode = wal", "synchronous = FULL", "busy_timeout = 5000", "foreign_keys = 1"):
            db.execute(f"PRAGMA {pragma}")
        db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")
        commits = []
        for i in range(n):
            t0 = time.perf_counter()
            db.execute("BEGIN")
            db.execute("INSERT INTO t (v) VALUES (?)", (f"row {i} " + "x" * 200,))
            db.execute("COMMIT")
            commits.append(time.perf_counter() - t0)
        db.close()

        conn = Conn(self.paper_port)
        status, data = conn.request("POST", "/NorenWClientTP/QuickAuth",
                                    b'jData={"uid":"BENCHFLOOR","pwd":"x","factor2":"","vc":"","appkey":"","imei":""}')
        token = json.loads(data).get("susertoken", "")
        body = f'jData={{"uid":"BENCHFLOOR"}}&jKey={token}'.encode()
        rtts = []
        for _ in range(n + 20):
            t0 = time.perf_counter()
            status, data = conn.request("POST", "/NorenWClientTP/UserDetails", body)
            rtts.append(time.perf_counter() - t0)
            if status != 200 or b'"Ok"' not in data:
                raise RuntimeError(f"UserDetails on the paper exchange failed: {status} {data[:200]!r}")
        conn.close()
        rtts = rtts[20:]
        self.results["floor"] = {"commit_ms": round(_median(commits) * 1000, 3),
                                 "http_rtt_ms": round(_median(rtts) * 1000, 3)}
        self.extra["floor_p99"] = {"commit_ms": summary(commits), "http_rtt_ms": summary(rtts)}
        _say(f"floor: commit {self.results['floor']['commit_ms']} ms, loopback RTT "
             f"{self.results['floor']['http_rtt_ms']} ms (medians of {n})")

    # ---- phases ---------------------------------------------------------------------------------

    def new_service(self, name: str, mode: str, details: bool = True) -> Service:
        websocket = mode == "ws"
        service = Service(self, name, websocket, 2.0 if websocket else 1.0, details=details).start()
        _say(f"service {name} ({mode}) ready in {service.start_s:.2f}s on port {service.port}")
        return service

    def latency_phase(self, mode: str) -> None:
        o = self.o
        service = self.new_service(f"lat-{mode}", mode)
        try:
            service.warm_up(o.warmup)
            _say(f"latency: {o.orders} orders at {o.rate:g}/s"
                 + (f", {o.dashboards} dashboard tab(s) open" if o.dashboards else ""))
            with DashboardViewers(service.port, o.dashboards) as viewers:
                shots = service.send(f"lat{mode}", o.orders, rate=o.rate, connections=8,
                                     budget_s=o.orders / o.rate * 3 + 30)
            if o.dashboards:
                self.extra["dashboards"] = {"tabs": o.dashboards, "polls": viewers.polls, "errors": viewers.errors}
            settle_s = 60 + o.orders / 20
            settled = service.settle(shots, settle_s)
            samples = self.samples(service, shots)
            # The first order on an instrument the service has not traded yet (extra look-ups), apart.
            fresh_tag, fresh_n = f"latnew{mode}", 10 if o.quick else 30
            fresh = service.send(fresh_tag, fresh_n, rate=10.0, connections=2, budget_s=fresh_n / 10 * 3 + 30,
                                 body=lambda i: alert_body(fresh_tag, i, fresh_symbols=True))
            service.settle(fresh, 30)
            fresh_samples = self.samples(service, fresh)
        finally:
            service.close()
        if not settled:
            self.notes.append(f"latency phase ({mode}): not every order reached a terminal status within "
                              f"{settle_s:.0f} s")
        self._note_problems(f"latency phase ({mode})", shots, samples)
        self.results["ack_ms"] = summary([s.ack - s.send for s in shots if s.status == 202])
        self.results["internal_ms"] = summary([s.internal for s in samples if s.internal is not None])
        self.extra["internal_from"] = ("the service's receipt stamp (received_mono)"
                                       if any(s.received is not None for s in samples)
                                       else "the bench writing the request (the service logs no receipt stamp)")
        self.results[f"fill_to_executed_ms_{mode}"] = summary(
            [s.executed - s.filled for s in samples if s.executed is not None and s.filled is not None])
        self.extra["breakdown"] = {
            "send -> alert accepted (ingress + registration commit)":
                summary([s.accepted - s.shot.send for s in samples if s.accepted]),
            "alert accepted -> SENT_TO_BROKER committed (risk, guard, broker, claim commit)":
                summary([s.sent_event - s.accepted for s in samples if s.sent_event and s.accepted]),
            "SENT_TO_BROKER committed -> PlaceOrder arrived (request build + HTTP)":
                summary([s.arrived - s.sent_event for s in samples if s.arrived and s.sent_event]),
            "PlaceOrder arrived -> filled (paper, fill_delay 0)":
                summary([s.filled - s.arrived for s in samples if s.filled and s.arrived]),
            "filled -> EXECUTED committed":
                summary([s.executed - s.filled for s in samples if s.executed and s.filled]),
        }
        self.extra["latency_orders"] = len(samples)
        self.extra["internal_ms_new_instrument"] = summary([s.internal for s in fresh_samples
                                                            if s.internal is not None])

    def _note_problems(self, phase: str, shots: list[Shot], samples: list[Sample]) -> None:
        statuses: dict[int, int] = {}
        for shot in shots:
            if shot.status != 202:
                statuses[shot.status] = statuses.get(shot.status, 0) + 1
        tags: dict[str, int] = {}
        for sample in samples:
            if sample.failed is not None:
                tags[sample.failed] = tags.get(sample.failed, 0) + 1
        if statuses or tags:
            self.notes.append(f"{phase}: non-202 answers {statuses or 'none'} (0 = no answer), FAILED orders "
                              f"{tags or 'none'}")

    def _burst_shots(self, service: Service, mode: str, alerts: int) -> list[Shot]:
        """`alerts` concurrent clients (connections opened beforehand), each writing one alert at the same moment;
        the last alert carries the remainder so that the legs add up to exactly --burst."""
        legs = self.o.burst
        return service.send(f"burst{mode}", alerts, rate=None, connections=alerts, budget_s=60,
                            legs=lambda i: min(BURST_LEGS_PER_ALERT, legs - i * BURST_LEGS_PER_ALERT))

    def burst_phase(self, mode: str) -> None:
        o = self.o
        service = self.new_service(f"burst-{mode}", mode)
        try:
            service.warm_up(min(o.warmup, 100))
            alerts = math.ceil(o.burst / BURST_LEGS_PER_ALERT)
            _say(f"burst: {o.burst} legs as {alerts} alerts of up to {BURST_LEGS_PER_ALERT} legs, one client each, "
                 "all at once")
            shots = self._burst_shots(service, mode, alerts)
            settled = service.settle(shots, 60 + o.burst / 20)
            samples = self.samples(service, shots)
        finally:
            service.close()
        first = min(s.send for s in shots)
        ok = [s for s in shots if s.status == 202]
        executed = [s.executed for s in samples if s.executed]
        legs = sum(len(s.command_ids) for s in ok)
        self.results["burst"] = {
            "legs": legs,
            "created_s": round(max(s.ack for s in ok) - first, 3) if ok else None,
            "executed_s": round(max(executed) - first, 3) if executed and settled and len(executed) == legs else None,
        }
        self.extra["burst_ack_ms"] = summary([s.ack - s.send for s in ok])
        self.extra["burst_internal_ms"] = summary([s.internal for s in samples if s.internal is not None])
        self.extra["burst_send_span_s"] = round(max(s.send for s in shots) - first, 3)
        self.extra["burst_alerts"] = len(shots)
        self._note_problems("burst", shots, samples)
        if legs != o.burst or not settled:
            self.notes.append(f"burst: {legs}/{o.burst} legs CREATED (202); all of those terminal: {settled}")

    def sweep_step(self, service: Service, mode: str, rate: float) -> dict:
        o = self.o
        count = max(10, int(rate * o.step_s))
        shots = service.send(f"sw{mode}{rate:g}", count, rate=rate, connections=int(min(48, max(4, rate / 25))),
                             budget_s=o.step_s * 3 + 5)
        settled = service.settle(shots, 30 + count / 20)
        samples = self.samples(service, shots)
        sends = sorted(s.send for s in shots)
        achieved = (len(sends) - 1) / (sends[-1] - sends[0]) if len(sends) > 1 else 0.0
        internal = summary([s.internal for s in samples if s.internal is not None])
        delivered = sum(1 for s in samples if s.arrived is not None)
        non_202 = sum(1 for s in shots if s.status != 202)
        ok = (settled and non_202 == 0 and len(shots) == count and delivered == count and internal is not None
              and internal["p99"] < P99_LIMIT_MS and achieved >= 0.9 * rate)
        _say(f"sweep {rate:g}/s: achieved {achieved:.0f}/s, internal {internal}, ok={ok}")
        return {"offered": rate, "achieved": round(achieved, 1), "orders": count, "delivered": delivered,
                "non_202": non_202, "internal_ms": internal,
                "ack_ms": summary([s.ack - s.send for s in shots if s.status == 202]), "ok": ok}

    def sweep_phase(self, mode: str) -> None:
        """Step the offered rate: double from 50/s while p99 < 50 ms (halve instead if 50/s already fails), then
        bisect once or twice between the last pass and the first failure. Bounded in steps and in time."""
        o = self.o
        service = self.new_service(f"sweep-{mode}", mode)
        steps: list[dict] = []
        best = 0.0
        passed, failed = None, None  # highest passing / lowest failing offered rate
        began = time.monotonic()
        rate: float | None = 20.0 if o.quick else 50.0
        try:
            service.warm_up(min(o.warmup, 200))
            while rate is not None and len(steps) < (1 if o.quick else 12) \
                    and time.monotonic() - began < o.sweep_budget_s:
                step = self.sweep_step(service, mode, rate)
                steps.append(step)
                if step["ok"]:
                    best = max(best, step["achieved"])
                    passed = max(passed or 0, rate)
                else:
                    failed = min(failed or math.inf, rate)
                if failed is None:
                    rate = rate * 2 if rate * 2 <= SWEEP_RATES[-1] else None
                elif passed is None:
                    rate = rate / 2 if rate / 2 >= 5 else None
                elif failed / passed > 1.3:
                    rate = float(round(math.sqrt(passed * failed)))
                else:
                    rate = None
                time.sleep(0.5)
        finally:
            service.close()
        self.results["throughput_orders_per_s"] = round(best, 1)
        self.extra["sweep"] = steps
        self.extra["sweep_first_failure"] = failed

    def poll_phase(self) -> None:
        o = self.o
        service = self.new_service("poll", "poll")
        count = o.poll_orders
        throughput = self.results.get("throughput_orders_per_s")
        rate = min(50.0, max(5.0, throughput / 2)) if throughput else 20.0  # well inside what the service sustains
        try:
            service.warm_up(min(o.warmup, 20))
            _say(f"poll: {count} orders at {rate:g}/s with use_websocket=false, poll_interval_s=1.0")
            shots = service.send("poll", count, rate=rate, connections=4, budget_s=count / rate * 3 + 30)
            service.settle(shots, 30 + count / 10)
            samples = self.samples(service, shots)
        finally:
            service.close()
        self.results["fill_to_executed_ms_poll"] = summary(
            [s.executed - s.filled for s in samples if s.executed is not None and s.filled is not None])

    def soak_phase(self) -> None:
        o = self.o
        throughput = self.results.get("throughput_orders_per_s") or 0
        if o.soak_rate:
            rate = o.soak_rate
        else:  # below the sustained rate, so the soak measures steady state rather than a growing backlog
            rate = max(5.0, min(1000.0, 0.7 * throughput)) if throughput else 20.0
        service = self.new_service("soak", "ws", details=False)
        chunks = []
        try:
            rss_cold = service.proc.rss_mb()
            warm = 100 if o.quick else 2 * SOAK_POOL + 100
            # the warm-up is the soak's own workload, so every strategy's position and instrument exists before
            # rss_mb_start is read: what grows afterwards grows with the order count, not with the pool
            warm_shots = service.send("soakwarm", warm, rate=25.0, connections=4, budget_s=warm / 25.0 * 2 + 30,
                                      body=lambda i: soak_body(i, SOAK_POOL).replace(b'"soak-', b'"soakwarm-'))
            service.settle(warm_shots, 60)
            if not service.tail.wait_count(warm, 60):
                self.notes.append("soak: warm-up did not settle in 60 s")
            time.sleep(1.0)
            rss_start = service.proc.rss_mb()
            _say(f"soak: {o.soak_orders} orders at {rate:.0f}/s (RSS {rss_cold} MB cold, {rss_start} MB warm)")
            window = Window(SOAK_POOL // 2, service.tail.terminal_count)
            window.sent = service.tail.terminal_count()  # the warm-up's orders are all terminal
            chunk_size = max(1000, o.soak_orders // 10)
            progress = {"n": 0, "t": time.monotonic(), "acks": []}
            progress_lock = threading.Lock()

            def on_shot(shot: Shot) -> None:
                with progress_lock:
                    progress["n"] += 1
                    progress["acks"].append(shot.ack - shot.send)
                    if progress["n"] % chunk_size == 0:
                        now = time.monotonic()
                        acks = summary(progress["acks"])
                        chunk = {"orders": progress["n"], "rate": round(chunk_size / (now - progress["t"]), 1),
                                 "ack_ms": acks, "rss_mb": service.proc.rss_mb(),
                                 "backlog": window.sent - service.tail.terminal_count()}
                        chunks.append(chunk)
                        progress["t"], progress["acks"] = now, []
                        _say(f"soak {chunk['orders']}: {chunk['rate']}/s, ack {acks}, RSS {chunk['rss_mb']} MB, "
                             f"backlog {chunk['backlog']}")

            budget = o.soak_orders / rate * 4 + 120
            t0 = time.monotonic()
            shots = service.send("soak", o.soak_orders, rate=rate, connections=8, budget_s=budget, window=window,
                                 on_shot=on_shot, body=lambda i: soak_body(i + warm, SOAK_POOL))
            accepted = sum(len(s.command_ids) for s in shots if s.status == 202)
            settled = service.tail.wait_count(warm + accepted, 300)
            elapsed = time.monotonic() - t0
            time.sleep(2.0)
            rss_end = service.proc.rss_mb()
            stop_s = service.stop()
            _say(f"soak: {accepted} orders in {elapsed:.0f}s; RSS {rss_start} -> {rss_end} MB; stopped in "
                 f"{stop_s:.1f}s; restarting for recovery")
            service.restart()
            recovery = service.start_s
            _say(f"recovery: /health 200 after {recovery:.2f}s")
        finally:
            service.close()
        if accepted < o.soak_orders or not settled:
            self.notes.append(f"soak: {accepted}/{o.soak_orders} orders accepted, all terminal: {settled}")
        failed: dict[str, int] = {}
        for tag in service.tail.failed.values():
            failed[tag] = failed.get(tag, 0) + 1
        if failed:
            self.notes.append(f"soak: FAILED orders {failed}")
        self.results.update(rss_mb_start=rss_start, rss_mb_end=rss_end, recovery_s=round(recovery, 3))
        self.extra["soak"] = {"orders": accepted, "rate": rate, "elapsed_s": round(elapsed, 1), "rss_cold_mb": rss_cold,
                              "stop_s": round(stop_s, 2), "chunks": chunks}

    # ---- the run --------------------------------------------------------------------------------

    def run(self) -> dict:
        o = self.o
        mode = o.watch or "ws"
        began = time.monotonic()
        try:
            self.start_paper()
            self.measure_floor()
            self.latency_phase(mode)
            self.burst_phase(mode)
            self.sweep_phase(mode)
            if o.watch is None:
                self.poll_phase()
            if o.soak:
                self.soak_phase()
        finally:
            for proc in reversed(self.procs):
                proc.stop()
            if self.paper_conn is not None:
                self.paper_conn.close()
            if o.keep:
                _say(f"kept {self.workdir}")
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)
        internal, floor = self.results["internal_ms"], self.results["floor"]
        if internal and floor:
            denominator = 2 * floor["commit_ms"] + floor["http_rtt_ms"]
            self.results["internal_over_floor"] = round(internal["p50"] / denominator, 2) if denominator > 0 else None
        ws, poll = self.results["fill_to_executed_ms_ws"], self.results["fill_to_executed_ms_poll"]
        if ws and poll and ws["p50"] > 0:
            poll["ratio_to_ws_p50"] = round(poll["p50"] / ws["p50"], 1)
        tp = self.results["throughput_orders_per_s"]
        if tp is not None and o.rate > tp:
            self.notes.append(f"the latency run's offered rate ({o.rate:g}/s) is above the sustained throughput "
                              f"({tp:g}/s): its ack/internal/fill figures include queueing behind a growing backlog")
        self.extra["elapsed_s"] = round(time.monotonic() - began, 1)
        return self.results


# ---------------------------------------------------------------------------------------------------- report

def _machine() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        kb = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} CPU ({model}), {mem} RAM, Python {sys.version.split()[0]}"


def _lat(value: dict | None) -> str:
    if not value:
        return "n/a"
    return f"{value['p50']:>9.2f} {value['p99']:>9.2f} {value['max']:>9.2f}"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


def render(results: dict, extra: dict, options: Options, notes: list[str]) -> str:
    r = results
    lines = [f"oms bench: {_machine()}",
             f"orders={options.orders} rate={options.rate:g}/s burst={options.burst} watch={options.watch or 'ws+poll'}"
             f"{' soak=' + str(options.soak_orders) if options.soak else ''} (took {extra.get('elapsed_s')}s)",
             "",
             f"{'latency (ms)':<28} {'p50':>9} {'p99':>9} {'max':>9}   target               result"]
    internal, ws, poll = r["internal_ms"], r["fill_to_executed_ms_ws"], r["fill_to_executed_ms_poll"]
    lines.append(f"{'ack_ms':<28} {_lat(r['ack_ms'])}   -")
    lines.append(f"{'internal_ms':<28} {_lat(internal)}   p50<=2 p99<=10       "
                 f"{_verdict(internal and internal['p50'] <= 2 and internal['p99'] <= 10)}")
    lines.append(f"{'fill_to_executed_ms_ws':<28} {_lat(ws)}   p50<=25              "
                 f"{_verdict(ws and ws['p50'] <= 25)}")
    ratio = poll.get("ratio_to_ws_p50") if poll else None
    lines.append(f"{'fill_to_executed_ms_poll':<28} {_lat(poll)}   poll/ws>=20x         "
                 f"{_verdict(None if ratio is None else ratio >= 20)}"
                 f"{f' ({ratio}x)' if ratio is not None else ''}")
    lines.append("")
    tp = r["throughput_orders_per_s"]
    lines.append(f"{'throughput_orders_per_s':<28} {tp if tp is not None else 'n/a':>9}   >=500/s              "
                 f"{_verdict(None if tp is None else tp >= 500)}")
    b = r["burst"] or {}
    created_ok = None if b.get("created_s") is None else (b["created_s"] <= 1.0 and b.get("legs", 0) >= options.burst)
    lines.append(f"{'burst legs / created_s / executed_s':<36} {b.get('legs')} / {b.get('created_s')} / "
                 f"{b.get('executed_s')}   created<=1s  {_verdict(created_ok)}")
    f = r["floor"] or {}
    lines.append(f"{'floor commit_ms / http_rtt_ms':<36} {f.get('commit_ms')} / {f.get('http_rtt_ms')}")
    lines.append(f"{'internal_over_floor':<36} {r['internal_over_floor']}")
    if "rss_mb_start" in r:
        start, end = r["rss_mb_start"], r["rss_mb_end"]
        growth = (end - start) / start if start and end else None
        lines.append(f"{'soak rss_mb_start / rss_mb_end':<36} {start} / {end}"
                     f"{f' ({growth * 100:+.1f}%)' if growth is not None else ''}   <=+10%  "
                     f"{_verdict(None if growth is None else growth <= 0.10)}")
        rec = r["recovery_s"]
        lines.append(f"{'soak recovery_s':<36} {rec}   <=3s  {_verdict(None if rec is None else rec <= 3.0)}")
    if extra.get("internal_from"):
        lines.append(f"internal_ms starts at {extra['internal_from']}")
    if extra.get("dashboards"):
        d = extra["dashboards"]
        lines.append(f"during the latency run {d['tabs']} dashboard tab(s) polled the Orders page every "
                     f"{DASHBOARD_POLL_S:g} s: {d['polls']} polls, {d['errors']} errors")
    if extra.get("internal_ms_new_instrument"):
        lines.append(f"internal_ms of an order on an instrument not traded before (SearchScrip + first quote): "
                     f"{extra['internal_ms_new_instrument']}")
    if extra.get("breakdown"):
        lines += ["", f"{'where internal time goes (ms)':<78} {'p50':>9} {'p99':>9} {'max':>9}"]
        for name, value in extra["breakdown"].items():
            lines.append(f"  {name:<76} {_lat(value)}")
    if extra.get("sweep"):
        lines += ["", "throughput sweep (internal_ms p50/p99, ack_ms p99):"]
        for step in extra["sweep"]:
            i, a = step["internal_ms"] or {}, step["ack_ms"] or {}
            lines.append(f"  offered {step['offered']:>5}/s achieved {step['achieved']:>7}/s  internal "
                         f"{i.get('p50')}/{i.get('p99')}  ack p99 {a.get('p99')}  delivered {step['delivered']}/"
                         f"{step['orders']}  {'ok' if step['ok'] else 'FAIL'}")
    if extra.get("burst_ack_ms"):
        lines.append(f"burst: {extra.get('burst_alerts')} alerts (<= {BURST_LEGS_PER_ALERT} legs each) written within "
                     f"{extra.get('burst_send_span_s')}s; ack_ms {extra['burst_ack_ms']}; internal_ms "
                     f"{extra.get('burst_internal_ms')}")
    if extra.get("soak"):
        s = extra["soak"]
        lines += ["", f"soak: {s['orders']} orders at {s['rate']:.0f}/s in {s['elapsed_s']}s, RSS cold "
                      f"{s['rss_cold_mb']} MB, stop {s['stop_s']}s"]
        for chunk in s["chunks"]:
            lines.append(f"  {chunk['orders']:>7}: {chunk['rate']}/s ack {chunk['ack_ms']} RSS {chunk['rss_mb']} MB "
                         f"backlog {chunk['backlog']}")
    for note in notes:
        lines.append(f"note: {note}")
    return "\n".join(lines) + "\n"


def run_bench(options: Options) -> int:
    if options.quick:
        options.warmup = min(options.warmup, 10)
        options.poll_orders = min(options.poll_orders, 10)
        options.step_s = 1.0
        options.soak_orders = min(options.soak_orders, 2000)
    bench = Bench(options)
    try:
        results = bench.run()
    except (RuntimeError, OSError, http.client.HTTPException) as exc:  # a child did not start or stopped answering
        sys.stderr.write(f"oms bench: {exc}\n(run with --keep to keep the logs of the paper exchange and the "
                         "service)\n")
        return 1
    sys.stdout.write(render(results, bench.extra, options, bench.notes))
    sys.stdout.flush()
    if options.json_path:
        Path(options.json_path).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0
