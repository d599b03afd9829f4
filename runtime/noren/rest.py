"""NorenOMS REST client (QuickAuth + jKey, or OAuth bearer tokens) over one keep-alive connection.

One client is meant for one thread (calls are serialised by a lock anyway). `fork()` gives a second client
with its own connection that shares the session credentials, so a watcher thread can read the books while
the broker thread places orders; a re-login in either is seen by both.

Transport: the client keeps a `requests.Session` with one HTTPAdapter (one pooled connection, retries off) and
sends through that adapter's urllib3 connection pool directly, i.e. the exact transport `Session.post` uses,
without the per-call work of requests around it (environment proxy/CA look-ups, request preparation, hooks,
cookies, Response objects), which was about 60 % of the client CPU per call. The URL, the headers, the TLS pool
and the timeouts are prepared once. A keep-alive connection the server closed while idle is seen by urllib3 before
the request is written (it opens a new one: nothing was sent on the old one); if it breaks after the request
was written, the error is an UnknownOutcome and nothing is resent.

Failures are raised as the classified errors of `runtime.noren.errors`. Nothing here retries: whether a
retry is safe is the caller's decision (see `BrokerError.retry_safe`).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Self, TypeVar
from urllib.parse import quote_plus

import requests
import urllib3
from loguru import logger
from pydantic import BaseModel, ValidationError
from requests.adapters import HTTPAdapter
from requests.utils import (
    check_header_validity,
    get_encoding_from_headers,
    guess_json_utf,
)
from urllib3.util.retry import Retry

from messages.noren import (
    LimitsReply,
    LoginReply,
    OrderActionReply,
    OrderBookEntry,
    OrderBookRow,
    OrderHistoryEntry,
    PlaceOrderReply,
    PlaceOrderRequest,
    PositionEntry,
    QuoteReply,
    ScripEntry,
    SearchScripReply,
    TradeBookEntry,
    UserDetailsReply,
)
from runtime.noren.errors import (
    BrokerProtocolError,
    BrokerRejected,
    SessionExpired,
    classify_request_exception,
    error_from_emsg,
    error_from_http_status,
    is_no_data,
)

AuthMode = Literal["quickauth", "oauth"]
M = TypeVar("M", bound=BaseModel)


class Secret(str):
    """A str whose repr is redacted, so that tracebacks rendered with variable values never show it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'<redacted>'"


class _RedactedDict(dict):
    """A login reply (it holds the session token) whose repr is redacted."""

    def __repr__(self) -> str:
        return "{<redacted login reply>}"


class _SecretBytes(bytes):
    __slots__ = ()

    def __repr__(self) -> str:
        return "b'<redacted>'"


def _secret_dict(values: dict[str, Any]) -> dict[str, Any]:
    return {key: Secret(value) if isinstance(value, str) else value for key, value in values.items()}


@dataclass(frozen=True)
class SessionInfo:
    """The logged-in session: uid, account id and the token (susertoken, or the OAuth access token)."""

    uid: str
    actid: str
    token: str = field(repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "token", Secret(self.token))


class _Credentials:
    """The session shared between a client and its forks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._session: SessionInfo | None = None

    def get(self) -> SessionInfo | None:
        with self._lock:
            return self._session

    def set(self, session: SessionInfo | None) -> None:
        with self._lock:
            self._session = session


def _sha256(text: str) -> Secret:
    return Secret(hashlib.sha256(text.encode("utf-8")).hexdigest())


def _totp_now(totp_secret: str) -> Secret:
    """The current TOTP code from a base32 seed ('' when no seed is configured, e.g. on paper)."""
    seed = "".join(totp_secret.split()).upper()
    if not seed:
        return Secret("")
    import pyotp  # local import: only QuickAuth needs it

    try:
        return Secret(pyotp.TOTP(seed).now())
    except (ValueError, TypeError) as exc:  # binascii.Error is a ValueError; also pyotp's 112-bit minimum
        # pyotp's and binascii's messages describe the problem, never the seed itself.
        reason = str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__
        raise ValueError(f"totp_secret is not a usable base32 TOTP seed ({reason})") from None


def _num(value: float) -> str:
    """A price/quantity as the broker wants it: a plain decimal string without float noise."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    text = f"{float(value):.4f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


class NorenRestClient:
    """Typed NorenOMS REST calls. See the module docstring for threading and error semantics."""

    def __init__(
        self,
        rest_url: str,
        *,
        auth: AuthMode = "quickauth",
        connect_timeout_s: float = 2.0,
        request_timeout_s: float = 5.0,
        _credentials: _Credentials | None = None,
    ) -> None:
        if auth not in ("quickauth", "oauth"):
            raise ValueError(f"auth must be 'quickauth' or 'oauth', not {auth!r}")
        if not rest_url:
            raise ValueError("rest_url is empty")
        self.rest_url = rest_url
        self.auth: AuthMode = auth
        self.connect_timeout_s = float(connect_timeout_s)
        self.request_timeout_s = float(request_timeout_s)
        self._creds = _credentials if _credentials is not None else _Credentials()
        self._lock = threading.Lock()
        self._http = self._new_http_session()
        self._timeout = urllib3.Timeout(connect=self.connect_timeout_s, read=self.request_timeout_s)
        self._pool: urllib3.HTTPConnectionPool | None = None  # the adapter's pool, resolved at first use
        self._path = ""  # the URL path that routes are appended to, as requests would send it
        self._retries: Retry | None = None
        self._headers = {**self._http.headers, "Content-Type": "application/x-www-form-urlencoded"}
        self._bearer: tuple[str, dict[str, str]] | None = None  # (token, headers with its Authorization)

    # ------------------------------------------------------------------------------------------------
    # Plumbing
    # ------------------------------------------------------------------------------------------------

    @staticmethod
    def _new_http_session() -> requests.Session:
        http = requests.Session()
        # No automatic retries of any kind: a resent POST could place an order twice.
        retry = Retry(total=0, connect=0, read=False, redirect=False, status=0, other=0, raise_on_status=False)
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=retry, pool_block=False)
        http.mount("http://", adapter)
        http.mount("https://", adapter)
        http.headers.update({"Connection": "keep-alive", "Accept": "application/json"})
        http.trust_env = False  # no proxy / CA bundle from the environment: the broker is reached directly
        return http

    def _connection_pool(self) -> urllib3.HTTPConnectionPool:
        """The adapter's pool for rest_url, set up as `HTTPAdapter.send` would (TLS verification included)."""
        if self._pool is None:
            base = self.rest_url.rstrip("/") + "/"
            probe = requests.Request("POST", base).prepare()  # requests' URL checks and quoting, once
            adapter = self._http.get_adapter(base)
            try:
                pool = adapter.get_connection_with_tls_context(probe, verify=True)
            except urllib3.exceptions.LocationValueError as exc:
                raise requests.exceptions.InvalidURL(exc) from None
            adapter.cert_verify(pool, base, True, None)
            self._path = probe.path_url
            self._retries = adapter.max_retries  # Retry(total=0, connect=0, read=False, ...): see _new_http_session
            self._pool = pool
        return self._pool

    def _headers_for(self, session: SessionInfo | None) -> dict[str, str]:
        if session is None or self.auth != "oauth":
            return self._headers
        if self._bearer is None or self._bearer[0] != session.token:
            value = Secret("Bearer " + session.token)
            check_header_validity(("Authorization", value))  # InvalidHeader, as requests would raise
            self._bearer = (session.token, {**self._headers, "Authorization": value})
        return self._bearer[1]

    def _url(self, route: str) -> str:
        return self.rest_url.rstrip("/") + "/" + route.lstrip("/")

    def fork(self) -> NorenRestClient:
        """A new client with its own HTTP connection, sharing this client's session credentials."""
        return NorenRestClient(
            self.rest_url,
            auth=self.auth,
            connect_timeout_s=self.connect_timeout_s,
            request_timeout_s=self.request_timeout_s,
            _credentials=self._creds,
        )

    def close(self) -> None:
        """Close the HTTP connection (the shared credentials are kept)."""
        with self._lock:
            self._http.close()
            self._pool = None  # closed with the session; the next call opens a new one, as requests did

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def session(self) -> SessionInfo | None:
        """The current session (shared with forks), or None before login / after logout."""
        return self._creds.get()

    @property
    def logged_in(self) -> bool:
        return self._creds.get() is not None

    def set_session(self, uid: str, actid: str, token: str) -> None:
        """Use an existing session (token = susertoken for QuickAuth, access token for OAuth)."""
        self._creds.set(SessionInfo(uid=uid, actid=actid or uid, token=token))

    def clear_session(self) -> None:
        self._creds.set(None)

    def _require_session(self, route: str) -> SessionInfo:
        session = self._creds.get()
        if session is None:
            raise SessionExpired(f"{route}: not logged in", route=route)
        return session

    def _post(self, route: str, values: dict[str, Any], *, login: bool = False,
              object_hook: Any = None) -> Any:
        """POST `values` as jData to `route`; return the decoded JSON or raise a classified BrokerError."""
        jdata = json.dumps({key: value for key, value in values.items() if value is not None})
        if login:
            session = None
            body = _SecretBytes(("jData=" + jdata).encode("utf-8"))
        else:
            session = self._require_session(route)
            if self.auth == "oauth":
                body = _SecretBytes(("jData=" + jdata).encode("utf-8"))
            else:
                body = _SecretBytes(("jData=" + jdata + "&jKey=" + session.token).encode("utf-8"))
        del jdata
        started = time.monotonic()
        with self._lock:
            try:
                pool = self._connection_pool()
                # Retry(total=0, read=False): a connect failure raises MaxRetryError (nothing was sent), a failure
                # after the request may have been written is re-raised as is; never a second attempt.
                response = pool.urlopen(
                    "POST", self._path + route.lstrip("/"), body=body, headers=self._headers_for(session),
                    retries=self._retries, redirect=False,
                    assert_same_host=False, timeout=self._timeout, preload_content=True, decode_content=True,
                    chunked=False,
                )
                status, text = response.status, _text_of(response)
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
                error = classify_request_exception(exc, route)
            else:
                error = None
        elapsed_ms = (time.monotonic() - started) * 1000.0
        if error is not None:
            logger.debug("noren {} failed after {:.1f} ms: {}", route, elapsed_ms, type(error).__name__)
            raise error from None
        logger.debug("noren {} HTTP {} in {:.1f} ms", route, status, elapsed_ms)

        http_error = error_from_http_status(status, route, login=login)
        if http_error is not None:
            emsg = _emsg_of(text)
            if emsg is not None:
                http_error.emsg = emsg
                # A plain 4xx (not 401/403/429), or any refused login, carrying a Not_Ok emsg: the broker's own
                # words decide (a login's emsg tells a wrong credential from anything else).
                if isinstance(http_error, BrokerRejected):
                    http_error = error_from_emsg(emsg, route, login=login)
                    http_error.http_status = status
            raise http_error from None
        try:
            data = json.loads(text, object_hook=object_hook)
        except ValueError:
            raise BrokerProtocolError(f"{route}: reply is not JSON", route=route, http_status=status) from None
        if login and isinstance(data, dict):
            return _RedactedDict(data)
        return data

    def _call_object(self, route: str, values: dict[str, Any], model: type[M], *, login: bool = False) -> M:
        """A call whose success reply is one object with stat Ok."""
        data = self._post(route, values, login=login)
        if not isinstance(data, dict):
            raise BrokerProtocolError(f"{route}: expected an object, got {type(data).__name__}", route=route)
        stat = str(data.get("stat", "")).strip().lower()
        if stat == "not_ok":
            raise error_from_emsg(data.get("emsg"), route, login=login)
        if stat != "ok":
            raise BrokerProtocolError(f"{route}: reply without stat Ok", route=route)
        return _validate(model, data, route)

    def _call_list(self, route: str, values: dict[str, Any], model: type[M], *, empty_on_no_data: bool,
                   key_field: str | None = None) -> list[M]:
        """A call whose success reply is a JSON array of rows (each with stat Ok).

        With `key_field`, every object carrying that field becomes its model while the reply is parsed (a json
        object_hook), so the raw rows of a large reply are never all alive at once; the others (the Not_Ok
        reply, a row without the field) are judged below as usual."""
        failed: list[str] = []

        def early(obj: dict) -> Any:
            if key_field not in obj or failed:
                return obj
            try:
                return model.model_validate(obj)
            except ValidationError as exc:
                failed.append(", ".join(".".join(str(p) for p in err.get("loc", ())) for err in exc.errors()[:5]))
                return obj

        data = self._post(route, values, object_hook=early if key_field else None)
        if failed:
            raise BrokerProtocolError(f"{route}: unexpected reply shape ({failed[0]})", route=route)
        if isinstance(data, dict):
            stat = str(data.get("stat", "")).strip().lower()
            emsg = data.get("emsg")
            if stat == "not_ok":
                if empty_on_no_data and is_no_data(emsg):
                    return []
                raise error_from_emsg(emsg, route)
            raise BrokerProtocolError(f"{route}: expected a list, got an object", route=route)
        if not isinstance(data, list):
            raise BrokerProtocolError(f"{route}: expected a list, got {type(data).__name__}", route=route)
        rows = []
        for row in data:
            if isinstance(row, model):
                rows.append(row)
                continue
            if not isinstance(row, dict):
                raise BrokerProtocolError(f"{route}: list row is {type(row).__name__}", route=route)
            rows.append(_validate(model, row, route))
        return rows

    # ------------------------------------------------------------------------------------------------
    # Session
    # ------------------------------------------------------------------------------------------------

    def login_quickauth(
        self,
        user_id: str,
        password: str,
        totp_secret: str,
        vendor_code: str,
        api_secret: str,
        imei: str,
    ) -> LoginReply:
        """QuickAuth with the current TOTP; on success the session is set (and shared with forks)."""
        password, totp_secret, api_secret = Secret(password), Secret(totp_secret), Secret(api_secret)
        values = _secret_dict(
            {
                "source": "API",
                "apkversion": "1.0.0",
                "uid": user_id,
                "pwd": _sha256(password),
                "factor2": _totp_now(totp_secret),
                "vc": vendor_code,
                "appkey": _sha256(f"{user_id}|{api_secret}"),
                "imei": imei,
            }
        )
        reply = self._call_object("QuickAuth", values, LoginReply, login=True)
        if not reply.susertoken:
            raise BrokerProtocolError("QuickAuth: Ok reply without susertoken", route="QuickAuth")
        uid = reply.uid or user_id
        self._creds.set(SessionInfo(uid=uid, actid=reply.actid or uid, token=reply.susertoken))
        logger.info("noren QuickAuth ok for {} (account {})", uid, reply.actid or uid)
        return reply

    def login_oauth(self, auth_code: str, oauth_client_id: str, api_secret: str, *, uid: str | None = None) -> LoginReply:
        """GenAcsTok: exchange the browser auth code for an access token; on success the session is set."""
        auth_code, api_secret = Secret(auth_code), Secret(api_secret)
        values = _secret_dict({"code": auth_code, "checksum": _sha256(f"{oauth_client_id}{api_secret}{auth_code}")})
        reply = self._call_object("GenAcsTok", values, LoginReply, login=True)
        if not reply.access_token:
            raise BrokerProtocolError("GenAcsTok: Ok reply without access_token", route="GenAcsTok")
        who = reply.uid or reply.actid or uid
        if not who:
            raise BrokerProtocolError("GenAcsTok: reply names no uid/actid (pass uid=)", route="GenAcsTok")
        self._creds.set(SessionInfo(uid=who, actid=reply.actid or who, token=reply.access_token))
        logger.info("noren GenAcsTok ok for {}", who)
        return reply

    def logout(self) -> None:
        """Logout; the shared session is cleared even if the broker already forgot it."""
        session = self._require_session("Logout")
        try:
            self._call_object("Logout", {"ordersource": "API", "uid": session.uid}, OrderActionReply)
        except SessionExpired:
            pass
        finally:
            self._creds.set(None)

    def user_details(self) -> UserDetailsReply:
        """A cheap session probe."""
        session = self._require_session("UserDetails")
        return self._call_object("UserDetails", {"uid": session.uid}, UserDetailsReply)

    # ------------------------------------------------------------------------------------------------
    # Orders
    # ------------------------------------------------------------------------------------------------

    def place_order(self, request: PlaceOrderRequest) -> str:
        """PlaceOrder; returns norenordno. An Ok reply may still be an RMS/exchange rejection (see the books).

        UnknownOutcome: the order may exist. Never resend; look for `request.remarks` in the order book.
        """
        session = self._require_session("PlaceOrder")
        values = {
            "ordersource": "API",
            "uid": session.uid,
            "actid": session.actid,
            "exch": request.exch,
            "tsym": quote_plus(request.tsym),
            "qty": _num(request.qty),
            "prc": "0" if request.prctyp in ("MKT", "SL-MKT") else _num(request.prc),
            "trgprc": None if request.trgprc is None else _num(request.trgprc),
            "dscqty": "0",
            "prd": request.prd,
            "trantype": request.trantype,
            "prctyp": request.prctyp,
            "ret": request.ret,
            "remarks": request.remarks,
            "amo": "Yes" if request.amo else None,
        }
        reply = self._call_object("PlaceOrder", values, PlaceOrderReply)
        if not reply.norenordno:
            raise BrokerProtocolError("PlaceOrder: Ok reply without norenordno", route="PlaceOrder")
        return reply.norenordno

    def modify_order(
        self,
        norenordno: str,
        exch: str,
        tsym: str,
        qty: int,
        prctyp: str,
        prc: float,
        trgprc: float | None = None,
    ) -> str:
        """ModifyOrder (qty is the TOTAL order quantity, filled + pending); returns the order number."""
        if prctyp in ("SL-LMT", "SL-MKT") and trgprc is None:
            raise ValueError(f"{prctyp} needs trgprc")
        session = self._require_session("ModifyOrder")
        values = {
            "ordersource": "API",
            "uid": session.uid,
            "actid": session.actid,
            "norenordno": str(norenordno),
            "exch": exch,
            "tsym": quote_plus(tsym),
            "qty": _num(int(qty)),
            "prctyp": prctyp,
            "prc": "0" if prctyp in ("MKT", "SL-MKT") else _num(prc),
            "trgprc": _num(trgprc) if prctyp in ("SL-LMT", "SL-MKT") and trgprc is not None else None,
        }
        reply = self._call_object("ModifyOrder", values, OrderActionReply)
        return reply.result or str(norenordno)

    def cancel_order(self, norenordno: str) -> str:
        """CancelOrder; returns the order number."""
        session = self._require_session("CancelOrder")
        values = {"ordersource": "API", "uid": session.uid, "norenordno": str(norenordno)}
        reply = self._call_object("CancelOrder", values, OrderActionReply)
        return reply.result or str(norenordno)

    # ------------------------------------------------------------------------------------------------
    # Books and market data
    # ------------------------------------------------------------------------------------------------

    def order_book(self) -> list[OrderBookEntry]:
        session = self._require_session("OrderBook")
        return self._call_list("OrderBook", {"ordersource": "API", "uid": session.uid}, OrderBookEntry,
                               empty_on_no_data=True)

    def order_book_rows(self) -> list[OrderBookRow]:
        """The OrderBook as OrderBookRow (the fields reconciliation reads). Each row becomes its small model while
        the reply is parsed, so the full rows of a large day's book are never all alive at once."""
        session = self._require_session("OrderBook")
        return self._call_list("OrderBook", {"ordersource": "API", "uid": session.uid}, OrderBookRow,
                               empty_on_no_data=True, key_field="norenordno")

    def single_order_history(self, norenordno: str) -> list[OrderHistoryEntry]:
        """Every state of one order, newest first."""
        session = self._require_session("SingleOrdHist")
        values = {"ordersource": "API", "uid": session.uid, "norenordno": str(norenordno)}
        return self._call_list("SingleOrdHist", values, OrderHistoryEntry, empty_on_no_data=False)

    def trade_book(self) -> list[TradeBookEntry]:
        session = self._require_session("TradeBook")
        values = {"ordersource": "API", "uid": session.uid, "actid": session.actid}
        return self._call_list("TradeBook", values, TradeBookEntry, empty_on_no_data=True)

    def position_book(self) -> list[PositionEntry]:
        session = self._require_session("PositionBook")
        values = {"uid": session.uid, "actid": session.actid}
        return self._call_list("PositionBook", values, PositionEntry, empty_on_no_data=True)

    def limits(self) -> LimitsReply:
        session = self._require_session("Limits")
        return self._call_object("Limits", {"uid": session.uid, "actid": session.actid}, LimitsReply)

    def get_quotes(self, exch: str, token: str) -> QuoteReply:
        session = self._require_session("GetQuotes")
        values = {"uid": session.uid, "exch": exch, "token": str(token)}
        return self._call_object("GetQuotes", values, QuoteReply)

    def search_scrip(self, exch: str, text: str) -> list[ScripEntry]:
        """SearchScrip; no match ('no data') is an empty list."""
        session = self._require_session("SearchScrip")
        values = {"uid": session.uid, "exch": exch, "stext": quote_plus(text)}
        try:
            reply = self._call_object("SearchScrip", values, SearchScripReply)
        except BrokerRejected as exc:
            if is_no_data(exc.emsg):
                return []
            raise
        return list(reply.values)


def _validate(model: type[M], data: dict[str, Any], route: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in err.get("loc", ())) for err in exc.errors()[:5])
        raise BrokerProtocolError(f"{route}: unexpected reply shape ({fields})", route=route) from None


def _text_of(response: urllib3.BaseHTTPResponse) -> str:
    """The reply body as text, decoded as `requests.Response.text` decodes it (charset of the Content-Type)."""
    content = response.data or b""
    encoding = get_encoding_from_headers(response.headers) or guess_json_utf(content) or "utf-8"
    try:
        return str(content, encoding, errors="replace")
    except (LookupError, TypeError):
        return str(content, errors="replace")


def _emsg_of(text: str) -> str | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if isinstance(data, dict) and str(data.get("stat", "")).strip().lower() == "not_ok":
        emsg = data.get("emsg")
        return str(emsg) if emsg else None
    return None


__all__ = ["AuthMode", "NorenRestClient", "Secret", "SessionInfo"]
