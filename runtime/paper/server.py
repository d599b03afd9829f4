"""The paper exchange's aiohttp application: NorenOMS REST + WebSocket on one port, control routes, faults.

All state lives on the event loop thread: the matching engine (engine.py), sessions, sockets, faults.
REST calls are routed by the LAST path segment, so `/NorenWClientTP//PlaceOrder`, `/NorenWClientAPI/PlaceOrder`
and `/PlaceOrder` are the same call. Any request that asks for a WebSocket upgrade is the order/market feed.
`/paper/...` are the control routes (JSON, no auth, loopback clients only).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote_plus

from aiohttp import WSCloseCode, WSMsgType, web
from loguru import logger

from runtime.config import PaperConfig
from runtime.paper.engine import Engine, OrderError, as_text, norentm, om_message
from runtime.paper.state import PaperStateError, load_state, save_state

NO_DATA = 'Error Occurred : 5 "no data"'
SESSION_EXPIRED = "Session Expired :  Invalid Session Key"
EXARR = ["NSE", "NFO", "BSE", "BFO", "MCX", "CDS"]
PRARR = [
    {"prd": "C", "s_prdt_ali": "CNC", "exch": EXARR},
    {"prd": "M", "s_prdt_ali": "NRML", "exch": EXARR},
    {"prd": "I", "s_prdt_ali": "MIS", "exch": EXARR},
]
FAULT_COUNTERS = ("latency_ms", "hang_place_orders", "http_500")
FAULT_ACTIONS = ("expire_sessions", "drop_websockets")
LOOPBACK = ("127.0.0.1", "::1", "localhost")
_JKEY_FIRST = re.compile(r"(?:^|&)jKey=([^&]*)")


def parse_body(body: bytes) -> tuple[dict | list | None, str | None]:
    """`jData=<json>&jKey=<token>` -> (jData, jKey). jData is the text after `jData=` up to the LAST `&jKey=`;
    a percent-encoded jData (form clients) is decoded; `tsym` and `stext` are unquote_plus'ed."""
    text = body.decode("utf-8", "replace")
    start = text.find("jData=")
    if start < 0:
        return None, None
    rest = text[start + len("jData="):]
    cut = rest.rfind("&jKey=")
    if cut >= 0:
        raw, key = rest[:cut], rest[cut + len("&jKey="):]
    else:
        raw, key = rest, None
        before = _JKEY_FIRST.search(text[:start])  # a form client may put jKey first
        if before:
            key = before.group(1)
    raw = raw.strip()
    if not raw.startswith(("{", "[")):
        raw = unquote_plus(raw)
    try:
        data = json.loads(raw)
    except ValueError:
        return None, None
    if isinstance(data, dict):
        for name in ("tsym", "stext"):
            if isinstance(data.get(name), str):
                data[name] = unquote_plus(data[name])
    return data, (unquote_plus(key.strip()) if key else None)


@dataclass
class Session:
    uid: str
    token: str


@dataclass
class Faults:
    latency_ms: int = 0
    hang_place_orders: int = 0
    http_500: int = 0

    def state(self) -> dict:
        return {name: getattr(self, name) for name in FAULT_COUNTERS}


@dataclass(eq=False)
class Client:
    """One WebSocket connection; its writer task sends queued frames in order."""

    ws: web.WebSocketResponse
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    uid: str | None = None
    token: str | None = None
    subs: dict[tuple[str, str], dict] = field(default_factory=dict)  # (exch, token) -> last sent quote
    feed: dict[tuple[str, str], str] = field(default_factory=dict)  # (exch, token) -> "t" | "d"

    def send(self, message: dict) -> None:
        self.queue.put_nowait(json.dumps(message))

    async def pump(self) -> None:
        while True:
            text = await self.queue.get()
            try:
                await self.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return


class PaperServer:
    """The exchange on one event loop. Construct, `await start()`, `await stop()` on the same loop."""

    def __init__(self, config: PaperConfig, state_path: Path | None = None) -> None:
        self.config = config
        self.engine = Engine(config)
        self.state_path = state_path
        self._next_save = 0.0  # time.time() before which a changed state is not written again
        self._save_failing = False
        if state_path is not None:
            state = load_state(state_path)
            if state is not None:
                try:
                    self.engine.restore(state, time.time())  # no socket yet: roll-over reports go nowhere
                except (KeyError, TypeError, ValueError, AttributeError) as exc:
                    raise PaperStateError(f"paper state file {state_path} is malformed ({exc!r}); move it away "
                                          "to start afresh (order numbers would then start again)") from None
                logger.info("paper exchange state loaded from {} ({} orders today)", state_path,
                            len(self.engine.all_orders()))
            self.engine.reserve = self.save_now
        self.faults = Faults()
        self.sessions: dict[str, Session] = {}
        # uid -> password checked at QuickAuth (settable at run time: POST /paper/users); login counts per uid.
        self.users: dict[str, str] = dict(config.users)
        self.logins: dict[str, dict[str, int]] = {}
        self.clients: set[Client] = set()
        self._runner: web.AppRunner | None = None
        self._clock: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._hung = 0
        self._arrived_mono: float | None = None  # bench instrumentation: arrival of the request being handled
        self._routes = {
            "quickauth": self._quick_auth,
            "genacstok": self._gen_acs_tok,
            "logout": self._logout,
            "userdetails": self._user_details,
            "placeorder": self._place_order,
            "modifyorder": self._modify_order,
            "cancelorder": self._cancel_order,
            "orderbook": self._order_book,
            "singleordhist": self._single_ord_hist,
            "tradebook": self._trade_book,
            "positionbook": self._position_book,
            "limits": self._limits,
            "getquotes": self._get_quotes,
            "searchscrip": self._search_scrip,
        }
        self._public = {"quickauth", "genacstok"}

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port."""
        if self.state_path is not None:
            try:
                self.save_now()  # fail at start, not at the first order, when the file cannot be written
            except OSError as exc:
                raise PaperStateError(f"paper state file {self.state_path} cannot be written: "
                                      f"{exc.strerror or exc}") from None
        app = web.Application(client_max_size=1 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self._clock = asyncio.get_running_loop().create_task(self._run_clock())
        bound = self._runner.addresses[0][1]
        logger.info("paper exchange listening on {}:{} (seed {})", host, bound, self.engine.seed)
        return bound

    async def stop(self) -> None:
        self._stopping.set()  # releases held (hung) PlaceOrder replies
        if self._clock is not None:
            self._clock.cancel()
            await asyncio.gather(self._clock, return_exceptions=True)
        await self._close_clients(list(self.clients), WSCloseCode.GOING_AWAY, b"paper exchange stopping")
        if self._runner is not None:
            await self._runner.cleanup()
        if self.state_path is not None and self.engine.dirty:
            try:
                self.save_now()
            except OSError as exc:
                logger.error("paper exchange: final save to {} failed: {}", self.state_path, exc)
        logger.info("paper exchange stopped")

    async def _run_clock(self) -> None:
        interval = self.config.tick_interval_ms / 1000.0
        next_tick = time.time() + interval
        while not self._stopping.is_set():
            now = time.time()
            try:
                reports = self.engine.roll(now) + self.engine.step(now)
                if now >= next_tick:
                    reports += self.engine.tick(now)
                    next_tick += interval
                    if next_tick <= now:  # fell behind: skip the missed ticks
                        next_tick = now + interval
                self._publish(reports)
            except Exception:  # noqa: BLE001 - the clock must survive a bug in one step
                logger.exception("paper exchange clock step failed")
            self._maybe_save()
            self._wake.clear()  # _publish sets it for calls from handlers; the clock has just caught up
            due = self.engine.next_due()
            wake_at = next_tick if due is None else min(due, next_tick)
            if self.state_path is not None and self.engine.dirty:
                wake_at = min(wake_at, self._next_save)
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, wake_at - time.time()))
            except TimeoutError:
                pass

    # ------------------------------------------------------------------ persistence

    def save_now(self) -> None:
        """Write the whole state (atomically) and commit its order-number reservation. Raises OSError."""
        started = time.time()
        snapshot = self.engine.snapshot()
        save_state(self.state_path, snapshot)
        self.engine.commit(snapshot)
        self.engine.dirty = False
        ended = time.time()
        # A big book costs more to write: keep saving to a small fraction of the exchange's time.
        self._next_save = ended + max(self.config.save_interval_ms / 1000.0, 20 * (ended - started))

    def _maybe_save(self) -> None:
        if self.state_path is None or not self.engine.dirty or time.time() < self._next_save:
            return
        try:
            self.save_now()
        except OSError as exc:
            self._next_save = time.time() + 5.0
            if not self._save_failing:
                logger.error("paper exchange: saving state to {} failed: {}", self.state_path, exc)
            self._save_failing = True
            return
        if self._save_failing:
            logger.info("paper exchange: state saved to {} again", self.state_path)
        self._save_failing = False

    # ------------------------------------------------------------------ publishing

    def _publish(self, reports: list[dict]) -> None:
        """Push `om` for each report to the account's sockets and `tf` for changed quotes; wake the clock."""
        for report in reports:
            message = None
            for client in self.clients:
                if client.uid == report["uid"]:
                    message = message or om_message(report)
                    client.send(message)
        changed = self.engine.drain_changed()
        if changed:
            for client in self.clients:
                for inst in changed:
                    key = (inst.exch, inst.token)
                    if key in client.subs:
                        self._send_delta(client, key, inst.quote())
        self._wake.set()

    @staticmethod
    def _touchline(quote: dict, depth: bool = False) -> dict:
        # The documented touchline has no circuit limits (uc / lc): GetQuotes and the depth feed have them.
        fields = ("lp", "pc", "v", "o", "h", "l", "c", "ti", "ls", "pp") + (("uc", "lc") if depth else ())
        return {"e": quote["exch"], "tk": quote["token"], "ts": quote["tsym"], **{k: quote[k] for k in fields}}

    def _send_delta(self, client: Client, key: tuple[str, str], quote: dict) -> None:
        current = self._touchline(quote, depth=client.feed.get(key) == "d")
        last = client.subs[key]
        delta = {k: v for k, v in current.items() if last.get(k) != v}
        if not delta:
            return
        client.subs[key] = current
        kind = "df" if client.feed.get(key) == "d" else "tf"
        client.send({"t": kind, "e": current["e"], "tk": current["tk"], **delta})

    # ------------------------------------------------------------------ HTTP entry

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request)
        path = request.path
        if path == "/paper" or path.startswith("/paper/"):
            return await self._control(request)
        return await self._rest(request)

    @staticmethod
    def _json(payload, status: int = 200) -> web.Response:
        return web.Response(text=json.dumps(payload), status=status, content_type="application/json")

    def _error(self, emsg: str, now: float | None = None) -> dict:
        return {"stat": "Not_Ok", "request_time": norentm(time.time() if now is None else now), "emsg": emsg}

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()  # when the request reached the exchange (headers parsed), for `oms bench`
        if self.faults.http_500 > 0:
            self.faults.http_500 -= 1
            return web.Response(status=500, text="Internal Server Error (paper fault)")
        route = request.path.rstrip("/").rsplit("/", 1)[-1]
        body = await request.read()
        now = time.time()
        handler = self._routes.get(route.lower())
        hang = False
        if request.method != "POST":
            reply = self._error(f"Invalid Input : {request.method} not allowed, use POST", now)
        elif handler is None:
            reply = self._error(f"Invalid Input : Unknown route {route!r}", now)
        else:
            self._arrived_mono = arrived  # _call is synchronous: nothing else runs on the loop until it returns
            reply, hang = self._call(route.lower(), handler, body, request.headers.get("Authorization", ""), now)
        if self.faults.latency_ms > 0:
            await asyncio.sleep(self.faults.latency_ms / 1000.0)
        if hang:
            await self._hold(request, route)
        return self._json(reply)

    def _call(self, route: str, handler, body: bytes, authorization: str, now: float) -> tuple[object, bool]:
        data, key = parse_body(body)
        if not isinstance(data, dict):
            return self._error("Invalid Input : jData is Missing.", now), False
        if not key and authorization.lower().startswith("bearer "):
            key = authorization[len("bearer "):].strip()
        rolled = self.engine.roll(now)  # the first call of a new IST day starts the day's books
        if rolled:
            self._publish(rolled)
        session = None
        if route not in self._public:
            session = self.sessions.get(key or "")
            claimed = as_text(data.get("uid"))
            if session is None or (claimed and claimed != session.uid):
                return self._error(SESSION_EXPIRED, now), False
        try:
            reply = handler(session, data, now)
        except OrderError as exc:
            return self._error(str(exc), now), False
        except Exception as exc:  # noqa: BLE001 - answer like the broker does, keep serving
            logger.exception("paper exchange {} failed", route)
            return self._error(f"Error Occurred : {exc}", now), False
        hang = route == "placeorder" and self.faults.hang_place_orders > 0 and reply.get("stat") == "Ok"
        if hang:
            self.faults.hang_place_orders -= 1
        return reply, hang

    async def _hold(self, request: web.Request, route: str) -> None:
        """A hung reply: wait until the client disconnects (the handler is cancelled) or the server stops,
        then drop the connection without answering."""
        self._hung += 1
        logger.info("paper exchange holding a {} reply (fault)", route)
        try:
            await self._stopping.wait()
        finally:
            self._hung -= 1
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError  # aiohttp treats it as a client disconnect: nothing is sent

    # ------------------------------------------------------------------ REST routes

    def _new_session(self, uid: str) -> Session:
        session = Session(uid, secrets.token_hex(32))
        self.sessions[session.token] = session
        return session

    def _quick_auth(self, _session, data: dict, now: float) -> dict:
        uid = as_text(data.get("uid"))
        if not uid:
            return self._error("Invalid Input : uid is Missing.", now)
        counts = self.logins.setdefault(uid, {"attempts": 0, "refused": 0})
        counts["attempts"] += 1
        password = self.users.get(uid)
        if password is not None and as_text(data.get("pwd")) != hashlib.sha256(password.encode()).hexdigest():
            counts["refused"] += 1
            return self._error("Invalid Input : Wrong Password", now)
        session = self._new_session(uid)
        self.engine.account(uid)
        return {
            "stat": "Ok",
            "request_time": norentm(now),
            "susertoken": session.token,
            "actid": uid,
            "uid": uid,
            "uname": f"PAPER {uid}",
            "brkname": "PAPER",
            "exarr": EXARR,
            "prarr": PRARR,
            "lastaccesstime": str(int(now)),
        }

    def _gen_acs_tok(self, _session, data: dict, now: float) -> dict:
        """OAuth: the paper auth code is `<uid>` or `<uid>:<anything>` (or jData carries `uid`)."""
        code = as_text(data.get("code"))
        uid = as_text(data.get("uid")) or code.split(":", 1)[0] or "PAPER1"
        access = self._new_session(uid)
        user = self._new_session(uid)
        self.engine.account(uid)
        return {
            "stat": "Ok",
            "request_time": norentm(now),
            "access_token": access.token,
            "refresh_token": secrets.token_hex(32),
            "susertoken": user.token,
            "actid": uid,
            "uid": uid,
            "expires_in": "86400",
        }

    def _logout(self, session: Session, _data, now: float) -> dict:
        self.sessions.pop(session.token, None)
        return {"stat": "Ok", "request_time": norentm(now)}

    def _user_details(self, session: Session, _data, now: float) -> dict:
        return {
            "stat": "Ok",
            "request_time": norentm(now),
            "uid": session.uid,
            "actid": session.uid,
            "uname": f"PAPER {session.uid}",
            "brkname": "PAPER",
            "exarr": EXARR,
            "prarr": PRARR,
        }

    def _place_order(self, session: Session, data: dict, now: float) -> dict:
        order, reports = self.engine.place(session.uid, data, now)
        order.arrived_mono = self._arrived_mono
        self._publish(reports)
        logger.debug("paper order {} {} {} {} -> {}", order.norenordno, order.trantype, order.qty, order.tsym, order.status)
        return {"stat": "Ok", "request_time": norentm(now), "norenordno": order.norenordno}

    def _modify_order(self, session: Session, data: dict, now: float) -> dict:
        self._publish(self.engine.modify(session.uid, data, now))
        return {"stat": "Ok", "request_time": norentm(now), "result": as_text(data.get("norenordno"))}

    def _cancel_order(self, session: Session, data: dict, now: float) -> dict:
        self._publish(self.engine.cancel(session.uid, data.get("norenordno"), now))
        return {"stat": "Ok", "request_time": norentm(now), "result": as_text(data.get("norenordno"))}

    def _book(self, rows: list[dict], now: float):
        return rows if rows else self._error(NO_DATA, now)

    def _order_book(self, session: Session, data: dict, now: float):
        rows = self.engine.order_book(session.uid)
        if data.get("prd"):
            rows = [row for row in rows if row["prd"] == data["prd"]]
        return self._book(rows, now)

    def _single_ord_hist(self, session: Session, data: dict, now: float):
        return self._book(self.engine.order_history(session.uid, data.get("norenordno")) or [], now)

    def _trade_book(self, session: Session, _data, now: float):
        return self._book(self.engine.trade_book(session.uid), now)

    def _position_book(self, session: Session, _data, now: float):
        return self._book(self.engine.position_book(session.uid), now)

    def _limits(self, session: Session, _data, now: float) -> dict:
        return {**self.engine.limits(session.uid), "request_time": norentm(now)}

    def _get_quotes(self, _session, data: dict, now: float) -> dict:
        inst = self.engine.find_token(as_text(data.get("exch")), as_text(data.get("token")))
        if inst is None:
            return self._error(NO_DATA, now)
        return {"stat": "Ok", "request_time": norentm(now), **inst.quote()}

    def _search_scrip(self, _session, data: dict, now: float) -> dict:
        found = self.engine.search(as_text(data.get("exch")), as_text(data.get("stext")), now)
        if not found:
            return self._error(NO_DATA, now)
        return {"stat": "Ok", "request_time": norentm(now), "values": [inst.scrip() for inst in found]}

    # ------------------------------------------------------------------ WebSocket

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=True, timeout=2.0)  # autoping answers the client's ping frames
        await ws.prepare(request)
        client = Client(ws)
        self.clients.add(client)
        writer = asyncio.get_running_loop().create_task(client.pump())
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    self._on_ws_text(client, message.data)
                elif message.type == WSMsgType.ERROR:
                    break
        finally:
            self.clients.discard(client)
            writer.cancel()
        return ws

    def _on_ws_text(self, client: Client, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        kind = message.get("t")
        if kind == "c":
            session = self.sessions.get(as_text(message.get("susertoken")))
            uid = as_text(message.get("uid"))
            if session is None or (uid and uid != session.uid):
                client.send({"t": "ck", "s": "Not_Ok", "uid": uid, "emsg": "Invalid Session Key"})
                return
            client.uid, client.token = session.uid, session.token
            client.send({"t": "ck", "s": "OK", "uid": session.uid})
        elif kind == "a":
            session = self.sessions.get(as_text(message.get("accesstoken")))
            if session is None:
                client.send({"t": "ak", "s": "Not_Ok", "emsg": "Invalid Access Token"})
                return
            client.uid, client.token = session.uid, session.token
            client.send({"t": "ak", "s": "OK", "uid": session.uid})
        elif client.uid is None:
            return  # nothing else before authentication (heartbeats included)
        elif kind == "o":
            client.send({"t": "ok"})
        elif kind in ("t", "d"):
            self._subscribe(client, as_text(message.get("k")), kind)
        elif kind in ("u", "ud"):
            for key in self._keys(as_text(message.get("k"))):
                client.subs.pop(key, None)
                client.feed.pop(key, None)
        # "h" (text heartbeat) and anything else: accepted silently

    @staticmethod
    def _keys(text: str) -> list[tuple[str, str]]:
        keys = []
        for part in text.split("#"):
            exch, _, token = part.partition("|")
            if exch and token:
                keys.append((exch.strip(), token.strip()))
        return keys

    def _subscribe(self, client: Client, text: str, kind: str) -> None:
        for key in self._keys(text):
            inst = self.engine.find_token(*key)
            if inst is None:
                logger.debug("paper exchange: subscription to unknown scrip {}|{}", *key)
                continue
            snapshot = self._touchline(inst.quote(), depth=kind == "d")
            client.subs[key] = snapshot
            client.feed[key] = kind
            client.send({"t": "dk" if kind == "d" else "tk", **snapshot})

    async def _close_clients(self, clients: list[Client], code: int, reason: bytes) -> None:
        async def close(client: Client) -> None:
            self.clients.discard(client)
            try:
                await asyncio.wait_for(client.ws.close(code=code, message=reason), 2.0)
            except (TimeoutError, ConnectionError, RuntimeError):
                pass

        await asyncio.gather(*(close(client) for client in clients))

    # ------------------------------------------------------------------ control routes

    async def _control(self, request: web.Request) -> web.StreamResponse:
        if request.remote not in LOOPBACK:
            return self._json({"ok": False, "error": "control routes are loopback only"}, 403)
        path = request.path.rstrip("/")
        method = request.method
        body = {}
        if method == "POST":
            raw = await request.read()
            try:
                body = json.loads(raw) if raw.strip() else {}
            except ValueError:
                return self._json({"ok": False, "error": "body is not JSON"}, 400)
            if not isinstance(body, dict):
                return self._json({"ok": False, "error": "body must be a JSON object"}, 400)
        if path == "/paper/health":
            return self._json({"ok": True})
        if path == "/paper/orders" and method == "GET":
            return self._json(self.engine.all_orders())
        if path == "/paper/faults" and method == "GET":
            return self._json(self.fault_state())
        if path == "/paper/faults" and method == "POST":
            try:
                return self._json(await self.apply_faults(body))
            except ValueError as exc:
                return self._json({"ok": False, "error": str(exc)}, 400)
        if path == "/paper/faults/reset" and method == "POST":
            self.reset_faults()
            return self._json(self.fault_state())
        if path == "/paper/forget" and method == "POST":  # test-only: the exchange loses an order
            number = as_text(body.get("norenordno"))
            if not number:
                return self._json({"ok": False, "error": "expected {norenordno}"}, 400)
            if not self.engine.forget(number):
                return self._json({"ok": False, "error": f"no order {number}"}, 404)
            logger.info("paper exchange: order {} forgotten (test control)", number)
            return self._json({"ok": True, "norenordno": number})
        if path == "/paper/users" and method == "POST":  # {"uid": "password" | null}: change a password now
            try:
                return self._json(self.set_users(body))
            except ValueError as exc:
                return self._json({"ok": False, "error": str(exc)}, 400)
        if path == "/paper/logins" and method == "GET":
            return self._json({"ok": True, "logins": self.logins})
        if path == "/paper/ltp" and method == "POST":
            try:
                return self._json(self.set_ltp(body))
            except (KeyError, TypeError, ValueError) as exc:
                return self._json({"ok": False, "error": f"expected {{exch, tsym, lp}}: {exc}"}, 400)
        return self._json({"ok": False, "error": f"unknown control route {method} {request.path}"}, 404)

    def fault_state(self) -> dict:
        return {"ok": True, **self.faults.state(), "held_replies": self._hung}

    async def apply_faults(self, body: dict) -> dict:
        unknown = set(body) - set(FAULT_COUNTERS) - set(FAULT_ACTIONS)
        if unknown:
            raise ValueError(f"unknown fault(s) {sorted(unknown)}; known: {list(FAULT_COUNTERS + FAULT_ACTIONS)}")
        for name in FAULT_COUNTERS:
            if name in body:
                value = body[name]
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError(f"{name} must be a non-negative integer")
                setattr(self.faults, name, value)
        if body.get("expire_sessions"):
            self.sessions.clear()
            await self._close_clients([c for c in self.clients if c.uid], WSCloseCode.POLICY_VIOLATION,
                                      b"Session Expired")
            logger.info("paper exchange: every session expired (fault)")
        if body.get("drop_websockets"):
            await self._close_clients(list(self.clients), WSCloseCode.GOING_AWAY, b"dropped (paper fault)")
            logger.info("paper exchange: every websocket dropped (fault)")
        return self.fault_state()

    def set_users(self, body: dict) -> dict:
        """Set (a string) or drop (null) the password QuickAuth checks for each uid given; never echoed."""
        if not all(isinstance(v, str) or v is None for v in body.values()):
            raise ValueError("expected {uid: password or null}")
        for uid, password in body.items():
            if password is None:
                self.users.pop(uid, None)
            else:
                self.users[uid] = password
        return {"ok": True, "users": sorted(self.users)}

    def reset_faults(self) -> None:
        self.faults = Faults()

    def set_ltp(self, body: dict) -> dict:
        exch, tsym = str(body["exch"]).strip().upper(), unquote_plus(str(body["tsym"]).strip())
        lp = float(body["lp"])
        if not lp > 0:
            raise ValueError("lp must be > 0")
        self._publish(self.engine.set_ltp(exch, tsym, lp, time.time(), walk=bool(body.get("walk", False))))
        inst = self.engine.instrument(exch, tsym)
        return {"ok": True, "exch": exch, "tsym": tsym, "token": inst.token, "lp": f"{inst.lp:.2f}"}
