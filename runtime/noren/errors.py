"""Broker errors, classified by what the caller may safely do next.

    BrokerError                 base
    +-- BrokerRejected          the broker answered Not_Ok: it said no. Safe to report; nothing happened.
    |   +-- LoginFailed         QuickAuth / GenAcsTok answered Not_Ok (or 401/403): the broker refused the login
    |       +-- CredentialsRejected     ... because of the credentials (its emsg names the password, OTP,
    |                                   vendor code, app key, user, OAuth code): retrying cannot help and the
    |                                   broker locks the account after a few wrong attempts
    +-- SessionExpired          `Session Expired ...` in-band, or HTTP 401/403: log in again, then resending is safe
    +-- NotSent                 the request never took effect (connect refused/timeout, DNS, ...): retry is safe
    |   +-- RateLimited         HTTP 429
    +-- UnknownOutcome          the request may have taken effect (read timeout, reset after sending, 5xx, ...):
        +-- BrokerProtocolError     a reply of unexpected shape / unparseable body
                                A mutating call that raised UnknownOutcome must NEVER be resent blindly:
                                look for it in the OrderBook (by remarks) first.

The helpers below are pure (no I/O) so they can be unit-tested. Messages never contain request bodies,
tokens or credentials: only the route, the broker's emsg, an HTTP status or the kind of transport failure.
"""

from __future__ import annotations

import re
import socket
import ssl

import requests
import urllib3.exceptions as u3


class BrokerError(Exception):
    """Base of every broker failure. `retry_safe`: resending the same request cannot duplicate it."""

    retry_safe: bool = False

    def __init__(
        self,
        message: str,
        *,
        route: str | None = None,
        emsg: str | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.route = route
        self.emsg = emsg
        self.http_status = http_status

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class BrokerRejected(BrokerError):
    """The broker said no (stat Not_Ok). Nothing was done; the emsg is safe to show."""

    retry_safe = True


class LoginFailed(BrokerRejected):
    """QuickAuth / GenAcsTok refused the login (stat Not_Ok, or HTTP 401/403). Never a network failure."""


class CredentialsRejected(LoginFailed):
    """The login was refused because of the credentials (see `is_credentials_rejection`)."""


class SessionExpired(BrokerError):
    """The session token is no longer valid: log in again; resending the request afterwards is safe."""

    retry_safe = True


class NotSent(BrokerError):
    """The request never took effect at the broker: retrying is safe."""

    retry_safe = True


class RateLimited(NotSent):
    """HTTP 429: the broker refused the request before processing it."""


class UnknownOutcome(BrokerError):
    """The request may or may not have taken effect. Never resend a mutating call blindly."""

    retry_safe = False


class BrokerProtocolError(UnknownOutcome):
    """The reply had an unexpected shape (not JSON, missing fields, wrong type)."""


# ---------------------------------------------------------------------------------------------------
# emsg classification
# ---------------------------------------------------------------------------------------------------

_SESSION_EXPIRED = re.compile(r"^\s*session\s+expired|invalid\s+session\s+key", re.IGNORECASE)
_NO_DATA = re.compile(r"\bno\s+data\b", re.IGNORECASE)


def is_session_expired(emsg: str | None) -> bool:
    return bool(emsg) and bool(_SESSION_EXPIRED.search(emsg))


# What the broker's login emsg says when a credential is wrong, e.g. `Invalid Input : Wrong Password`,
# `Invalid Input : Invalid OTP`, `Invalid Input : Invalid Vendor Code`, `Invalid Input : Invalid App Key`,
# `Invalid Input : User Blocked`. Matched loosely (wording differs between Noren deployments).
_CREDENTIALS = re.compile(
    r"password|\bpwd\b|\bt?otp\b|factor ?2|two.?factor|\b2fa\b|vendor|\bvc\b|app ?key|api ?key|api.?secret"
    r"|\buser\b|\buser ?id\b|\buid\b|blocked|locked|disabled|checksum|auth(?:orization)? ?code|invalid\s+code",
    re.IGNORECASE,
)


def is_credentials_rejection(emsg: str | None) -> bool:
    """A login emsg that blames the credentials (as opposed to e.g. a busy server)."""
    return bool(emsg) and bool(_CREDENTIALS.search(emsg))


def is_no_data(emsg: str | None) -> bool:
    """`Error Occurred : 5 "no data"`: an empty book, not an error."""
    return bool(emsg) and bool(_NO_DATA.search(emsg))


# `Rejected : ORA:Order not found` (ModifyOrder, SingleOrdHist on some deployments) and
# `Rejected : ORA:Order not found to Cancel` (CancelOrder): the broker has no such order (any more).
_ORDER_NOT_FOUND = re.compile(r"\border\s+not\s+found\b", re.IGNORECASE)


def is_order_not_found(emsg: str | None) -> bool:
    """The broker's answer that it does not know the order number (not a failure to answer)."""
    return bool(emsg) and bool(_ORDER_NOT_FOUND.search(emsg))


def says_order_unknown(exc: BaseException) -> bool:
    """True only for a broker answer that the order does not exist: a Not_Ok `Order not found`, or `no data`
    for a look-up of one order (SingleOrdHist). A failed call (transport, 5xx, Session Expired, any other
    emsg) proves nothing and is False."""
    return (isinstance(exc, BrokerRejected) and not isinstance(exc, LoginFailed)
            and (is_order_not_found(exc.emsg) or is_no_data(exc.emsg)))


def error_from_emsg(emsg: str | None, route: str | None = None, *, login: bool = False) -> BrokerError:
    """The error for a `stat: Not_Ok` reply."""
    text = (emsg or "").strip() or "Not_Ok without emsg"
    prefix = f"{route}: " if route else ""
    if is_session_expired(text) and not login:
        return SessionExpired(f"{prefix}{text}", route=route, emsg=text)
    if login:
        cls = CredentialsRejected if is_credentials_rejection(text) else LoginFailed
        return cls(f"{prefix}{text}", route=route, emsg=text)
    return BrokerRejected(f"{prefix}{text}", route=route, emsg=text)


def error_from_http_status(status: int, route: str | None = None, *, login: bool = False) -> BrokerError | None:
    """The error for a non-200 HTTP status (None for 200).

    401/403 -> SessionExpired (LoginFailed on the login routes), 429 -> RateLimited, 5xx -> UnknownOutcome,
    3xx -> BrokerProtocolError (the request reached a server; we cannot tell what it did),
    other 4xx -> BrokerRejected (the server refused the request as such).
    """
    if status == 200:
        return None
    prefix = f"{route}: " if route else ""
    if status in (401, 403):
        if login:
            return LoginFailed(f"{prefix}HTTP {status}", route=route, http_status=status)
        return SessionExpired(f"{prefix}HTTP {status}", route=route, http_status=status)
    if status == 429:
        return RateLimited(f"{prefix}HTTP 429 (rate limited)", route=route, http_status=status)
    if status >= 500:
        return UnknownOutcome(f"{prefix}HTTP {status}", route=route, http_status=status)
    if 300 <= status < 400 or status < 200:
        return BrokerProtocolError(f"{prefix}unexpected HTTP {status}", route=route, http_status=status)
    if 200 < status < 300:
        return BrokerProtocolError(f"{prefix}unexpected HTTP {status}", route=route, http_status=status)
    cls = LoginFailed if login else BrokerRejected
    return cls(f"{prefix}HTTP {status}", route=route, http_status=status)


# ---------------------------------------------------------------------------------------------------
# Transport exception classification
# ---------------------------------------------------------------------------------------------------


def _causes(exc: BaseException) -> list[BaseException]:
    """`exc` and everything it wraps (args, urllib3 `reason`, __cause__, __context__), breadth first."""
    seen: set[int] = set()
    queue: list[BaseException] = [exc]
    out: list[BaseException] = []
    while queue:
        item = queue.pop(0)
        if id(item) in seen:
            continue
        seen.add(id(item))
        out.append(item)
        reason = getattr(item, "reason", None)
        if isinstance(reason, BaseException):
            queue.append(reason)
        for arg in getattr(item, "args", ()):
            if isinstance(arg, BaseException):
                queue.append(arg)
        for linked in (item.__cause__, item.__context__):
            if isinstance(linked, BaseException):
                queue.append(linked)
    return out


def _describe(exc: BaseException) -> str:
    """A short, secret-free description of a transport failure (class name and errno text only)."""
    errno_text = ""
    for cause in _causes(exc):
        if isinstance(cause, OSError) and cause.strerror:
            errno_text = f": {cause.strerror}"
            break
    return f"{type(exc).__name__}{errno_text}"


def classify_request_exception(exc: BaseException, route: str | None = None) -> BrokerError:
    """Map a `requests`, urllib3 or socket exception to NotSent or UnknownOutcome.

    The REST client sends through urllib3 (the pool of requests' HTTPAdapter) and passes urllib3's exceptions
    here unwrapped; each is classified as the requests exception that HTTPAdapter.send wraps it in would be.

    NotSent: nothing reached the server (connection refused, connect timeout, DNS failure, TLS certificate
    failure, a closed pool, an invalid URL). UnknownOutcome: the request may have been written (read timeout,
    connection reset / remote disconnect / broken pipe after connecting, truncated body, anything else).
    """
    prefix = f"{route}: " if route else ""
    causes = _causes(exc)

    def unknown(kind: str) -> UnknownOutcome:
        return UnknownOutcome(f"{prefix}{kind} ({_describe(exc)})", route=route)

    def not_sent(kind: str) -> NotSent:
        return NotSent(f"{prefix}{kind} ({_describe(exc)})", route=route)

    # Order matters: ConnectTimeout is also a ConnectionError; ReadTimeout is also a Timeout.
    if isinstance(exc, requests.exceptions.ReadTimeout) or any(isinstance(c, u3.ReadTimeoutError) for c in causes):
        return unknown("read timeout")
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return not_sent("connect timeout")
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                        requests.exceptions.InvalidSchema, requests.exceptions.InvalidHeader,
                        u3.LocationValueError)):
        return not_sent("invalid request")
    if isinstance(exc, (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)):
        return unknown("truncated reply")
    # Anything that says the connection broke after it was made: the request may have been written.
    broken = any(
        isinstance(c, (u3.ProtocolError, ConnectionResetError, BrokenPipeError, ConnectionAbortedError))
        or type(c).__name__ in ("RemoteDisconnected", "IncompleteRead")
        for c in causes
    )
    if broken and not any(isinstance(c, u3.NewConnectionError) for c in causes):
        return unknown("connection broken")
    if any(isinstance(c, (u3.NewConnectionError, socket.gaierror, ConnectionRefusedError)) for c in causes):
        if any(isinstance(c, (u3.NameResolutionError, socket.gaierror)) for c in causes):
            return not_sent("DNS failure")
        return not_sent("connection failed")
    if any(isinstance(c, u3.ConnectTimeoutError) for c in causes):
        return not_sent("connect timeout")
    if any(isinstance(c, ssl.SSLCertVerificationError) for c in causes):
        return not_sent("TLS certificate rejected")
    if any(isinstance(c, u3.ClosedPoolError) for c in causes):
        return not_sent("connection pool closed")
    if isinstance(exc, requests.exceptions.ProxyError):
        return not_sent("proxy connection failed")
    if isinstance(exc, requests.exceptions.Timeout):
        return unknown("timeout")
    return unknown("transport error")
