"""Who may call the listener: the plain rules behind the two surfaces (issue 13). No I/O except hashing.

- The webhook surface (`POST /webhook`, `POST /webhook/<path_token>`, `GET /health`) authenticates an alert by
  the webhook secret in the body, by an unguessable path token (TradingView cannot set headers), or by an
  `X-Signature` over `X-Timestamp + "\\n" + path + "\\n" + body` (a replayed or stale signature is refused).
- The operator surface (everything else) needs operator credentials: `Authorization: Bearer <token>`, or a
  dashboard session from logging in with the operator password (scrypt hash).
- The client address is the peer, or, when the peer is a trusted proxy, the rightmost `X-Forwarded-For` hop
  that is not one. Ten failed authentications in five minutes lock an address out for fifteen minutes, never an
  address that also carries the trader's own alerts (allow_ips, TradingView's).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
from collections import deque
from dataclasses import dataclass, field

# TradingView sends webhooks from these published addresses (its documentation, 2026).
TRADINGVIEW_IPS = ("52.89.214.238", "34.212.75.30", "54.218.53.128", "52.32.178.7")
SIGNATURE_WINDOW_S = 300.0  # X-Timestamp within +/- 5 minutes
LOCKOUT_FAILURES = 10
LOCKOUT_WINDOW_S = 300.0
LOCKOUT_S = 900.0
_SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1}


def constant_equal(given: str | None, expected: str | None) -> bool:
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8", "replace"))


def new_token() -> str:
    return secrets.token_urlsafe(32)


# ---- operator password -----------------------------------------------------------------------------------

def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """`scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>` (hashlib.scrypt: memory-hard, in the standard library)."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${b64(salt)}${b64(digest)}"


def is_password_hash(value: str) -> bool:
    return value.startswith("scrypt$") and value.count("$") == 5


def password_ok(given: str | None, configured: str | None) -> bool:
    """`configured` is a plain password or a hash made by `oms operator hash-password`."""
    if not given or not configured:
        return False
    if not is_password_hash(configured):
        return constant_equal(given, configured)
    try:
        _, n, r, p, salt, digest = configured.split("$")
        computed = hashlib.scrypt(given.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                                  dklen=len(base64.b64decode(digest)), maxmem=128 * 1024 * 1024)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(computed, base64.b64decode(digest))


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


# ---- webhook signatures ----------------------------------------------------------------------------------

def signature_v2(secret: str, timestamp: str, path: str, body: bytes) -> str:
    message = timestamp.encode() + b"\n" + path.encode() + b"\n" + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def check_signature(secret: str, signature: str | None, timestamp: str | None, path: str, body: bytes,
                    now: float) -> str | None:
    """None when the signature is good; otherwise why not (for the audit row, never the secret)."""
    if not secret or not signature:
        return "no signature"
    if not timestamp:
        return "X-Timestamp missing (body-only signatures are refused)"
    try:
        stamp = float(timestamp.strip())
    except ValueError:
        return "X-Timestamp is not Unix seconds"
    if abs(now - stamp) > SIGNATURE_WINDOW_S:
        return "X-Timestamp outside +/-5 minutes"
    try:  # a header is latin-1 text; anything not ASCII cannot be a hex digest
        given = signature.strip().lower().encode("ascii")
    except UnicodeEncodeError:
        return "signature is not a hex digest"
    if not hmac.compare_digest(signature_v2(secret, timestamp.strip(), path, body).encode(), given):
        return "signature does not match"
    return None


def signature_key(signature: str) -> str:
    """What the replay memory stores: a digest of the signature, never the signature itself."""
    return hashlib.sha256(signature.strip().lower().encode()).hexdigest()


# ---- client address --------------------------------------------------------------------------------------

def _networks(values) -> tuple:
    out = []
    for value in values or ():
        try:
            out.append(ipaddress.ip_network(str(value).strip(), strict=False))
        except ValueError:
            continue
    return tuple(out)


def _is_loopback(address: str | None) -> bool:
    try:
        return ipaddress.ip_address((address or "").strip()).is_loopback
    except ValueError:
        return False


def _in(address: str | None, networks) -> bool:
    try:
        ip = ipaddress.ip_address((address or "").strip())
    except ValueError:
        return False
    return any(ip in net for net in networks)


@dataclass(frozen=True)
class Addresses:
    """`[service] trusted_proxies` and `[webhook] allow_ips` (a list, or "tradingview")."""

    trusted_proxies: tuple = ()
    allow: tuple = ()  # empty: every address may send alerts

    @classmethod
    def from_config(cls, trusted_proxies, allow_ips) -> "Addresses":
        allow = TRADINGVIEW_IPS if allow_ips == "tradingview" else tuple(allow_ips or ())
        return cls(_networks(trusted_proxies), _networks(allow))

    def client(self, peer: str | None, forwarded_for: str | None) -> str:
        """The peer, or the rightmost X-Forwarded-For hop that is not a trusted proxy when the peer is one."""
        peer = (peer or "").strip()
        if not forwarded_for or not _in(peer, self.trusted_proxies):
            return peer
        hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
        for hop in reversed(hops):
            if not _in(hop, self.trusted_proxies):
                return hop[:64]
        return hops[0][:64] if hops else peer

    def may_send_alerts(self, client: str) -> bool:
        return not self.allow or _in(client, self.allow)

    def never_locked(self, client: str) -> bool:
        """Addresses that carry the trader's own alerts (shared by every TradingView user) and loopback (the
        `oms` commands; a local reverse proxy whose clients cannot be told apart without trusted_proxies):
        never locked out — a stranger must not be able to block the trader's own exits."""
        return _in(client, self.allow) or _in(client, _networks(TRADINGVIEW_IPS)) or _is_loopback(client)


@dataclass
class Lockout:
    """Failed authentications per client address: LOCKOUT_FAILURES within LOCKOUT_WINDOW_S -> locked out for
    LOCKOUT_S. Bounded: an address's history is at most LOCKOUT_FAILURES stamps, and at most `max_addresses`
    addresses are remembered (the oldest forgotten)."""

    max_addresses: int = 10_000
    failures: dict[str, deque] = field(default_factory=dict)
    locked_until: dict[str, float] = field(default_factory=dict)

    def locked(self, client: str, now: float) -> bool:
        until = self.locked_until.get(client)
        if until is None:
            return False
        if now >= until:
            del self.locked_until[client]
            return False
        return True

    def failed(self, client: str, now: float) -> bool:
        """Record a failure; True when it locks the address out (the first time only)."""
        stamps = self.failures.get(client)
        if stamps is None:
            if len(self.failures) >= self.max_addresses:
                self.failures.pop(next(iter(self.failures)))
            stamps = self.failures[client] = deque(maxlen=LOCKOUT_FAILURES)
        stamps.append(now)
        if len(stamps) == LOCKOUT_FAILURES and now - stamps[0] <= LOCKOUT_WINDOW_S:
            stamps.clear()
            self.locked_until[client] = now + LOCKOUT_S
            return True
        return False
