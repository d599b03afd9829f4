"""NorenRestClient's transport: urllib3 through the requests adapter's pool, with requests' exact semantics.

Each failure scenario runs against a scripted raw-socket server twice: once through the client, once through a
plain `requests.Session.post` configured as the client used to be (the reference). The error class and the
number of copies of the request that reached the server must be the same, and no POST is ever sent twice.
The stale keep-alive case is covered both ways it can happen: closed while idle (seen before sending: a new
connection, no error) and closed after the request was written (UnknownOutcome, not resent).
"""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import ssl
import threading

import pytest
import requests
import urllib3.exceptions as u3
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from runtime.noren.errors import (
    NotSent,
    UnknownOutcome,
    classify_request_exception,
    error_from_http_status,
)
from runtime.noren.rest import NorenRestClient

OK = json.dumps({"stat": "Ok", "uname": "X", "actid": "U1", "brkname": "B", "email": "x@y"}).encode()


def read_request(conn: socket.socket, buf: bytes) -> tuple[bytes | None, bytes]:
    """One whole HTTP request (head + Content-Length body) from `conn`, or None at EOF."""
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            return None, buf
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None, b""
        rest += chunk
    return head + b"\r\n\r\n" + rest[:length], rest[length:]


def reply(body: bytes = OK, status: int = 200, extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"{extra}\r\n").encode() + body


class Scripted:
    """A raw HTTP/1.1 server; `script` says what to do with the 1st, 2nd, ... request (then: answer)."""

    def __init__(self, script: list[str]):
        self.script = list(script)
        self.requests: list[tuple[int, bytes]] = []  # (connection number, raw request)
        self.connections = 0
        self.closed = threading.Event()  # set when an "answer_then_close" connection is closed
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/NorenWClientTP/"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                number = self.connections
            threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        buf = b""
        with conn:
            while True:
                request, buf = read_request(conn, buf)
                if request is None:
                    return
                with self.lock:
                    self.requests.append((number, request))
                    action = self.script.pop(0) if self.script else "answer"
                if action == "answer":
                    conn.sendall(reply())
                elif action == "answer_then_close":
                    conn.sendall(reply())
                    conn.close()
                    self.closed.set()
                    return
                elif action == "close":  # read the request, never answer: it may have been processed
                    return
                elif action == "hang":
                    self.release.wait(10)
                    return
                elif action == "truncate":
                    conn.sendall(reply(body=OK)[:-10])
                    return
                elif action == "gzip":
                    conn.sendall(reply(gzip.compress(OK), extra="Content-Encoding: gzip\r\n"))
                elif action == "500":
                    conn.sendall(reply(b'{"stat":"Not_Ok","emsg":"oops"}', status=500))
                else:
                    raise AssertionError(action)

    def bodies(self) -> list[bytes]:
        return [raw.split(b"\r\n\r\n", 1)[1] for _, raw in self.requests]

    def stop(self) -> None:
        self.release.set()
        self.sock.close()


@pytest.fixture
def server_factory():
    servers: list[Scripted] = []

    def make(*script: str) -> Scripted:
        servers.append(Scripted(list(script)))
        return servers[-1]

    yield make
    for server in servers:
        server.stop()


def client_for(server: Scripted, **kwargs) -> NorenRestClient:
    client = NorenRestClient(server.url, connect_timeout_s=1.0, request_timeout_s=kwargs.pop("timeout", 2.0), **kwargs)
    client.set_session("U1", "U1", "tok")
    return client


class Reference:
    """The former transport: requests.Session.post with the same adapter, headers and timeouts."""

    def __init__(self, url: str, timeout: float = 2.0):
        self.url = url
        self.timeout = timeout
        self.http = requests.Session()
        retry = Retry(total=0, connect=0, read=False, redirect=False, status=0, other=0, raise_on_status=False)
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=retry, pool_block=False)
        self.http.mount("http://", adapter)
        self.http.headers.update({"Connection": "keep-alive", "Accept": "application/json"})

    def user_details(self, n: int) -> object:
        body = f'jData={{"uid": "U1", "n": {n}}}&jKey=tok'.encode()
        try:
            response = self.http.post(self.url + "UserDetails", data=body, timeout=(1.0, self.timeout),
                                      headers={"Content-Type": "application/x-www-form-urlencoded"},
                                      allow_redirects=False)
            return error_from_http_status(response.status_code, "UserDetails") or response.status_code
        except requests.RequestException as exc:
            return classify_request_exception(exc, "UserDetails")


def outcome(call) -> object:
    try:
        call()
        return 200
    except (NotSent, UnknownOutcome) as exc:
        return exc


def run_both(server_factory, script: list[str], calls: int, timeout: float = 2.0):
    """Run `calls` UserDetails through the client and through the reference; each against its own server."""
    ours_server, ref_server = server_factory(*script), server_factory(*script)
    client = client_for(ours_server, timeout=timeout)
    reference = Reference(ref_server.url, timeout=timeout)
    ours, ref = [], []
    for n in range(calls):
        if "answer_then_close" in script[:n]:  # let the idle connection's close arrive first, as in life
            assert ours_server.closed.wait(5) and ref_server.closed.wait(5)
        ours.append(outcome(client.user_details))
        ref.append(reference.user_details(n))
    return ours, ref, ours_server, ref_server


def same_kind(ours: list, ref: list) -> None:
    assert [type(o) if not isinstance(o, int) else o for o in ours] == \
           [type(r) if not isinstance(r, int) else r for r in ref]


@pytest.mark.parametrize("script, calls, expected", [
    (["answer", "answer", "answer"], 3, [200, 200, 200]),
    (["close"], 1, [UnknownOutcome]),                          # fresh connection, written, no answer
    (["answer", "close", "answer"], 3, [200, UnknownOutcome, 200]),  # broken after writing on a reused one
    (["answer_then_close", "answer"], 2, [200, 200]),          # closed while idle: a new connection, no error
    (["truncate", "answer"], 2, [UnknownOutcome, 200]),
    (["500", "answer"], 2, [UnknownOutcome, 200]),
])
def test_outcomes_match_requests_and_nothing_is_sent_twice(server_factory, script, calls, expected):
    ours, ref, ours_server, ref_server = run_both(server_factory, script, calls)
    assert [o if isinstance(o, int) else type(o) for o in ours] == expected
    same_kind(ours, ref)
    # Every call reached the server exactly once (no resend after any failure), as with requests.
    assert len(ours_server.requests) == len(ref_server.requests) == calls
    assert ours_server.connections == ref_server.connections


def test_a_connection_closed_while_idle_is_replaced_before_anything_is_written(server_factory):
    server = server_factory("answer_then_close", "answer")
    client = client_for(server)
    client.user_details()
    assert server.closed.wait(5)
    client.user_details()  # not an UnknownOutcome: urllib3 saw the close before writing on that connection
    assert [number for number, _ in server.requests] == [1, 2]


def test_a_connection_broken_after_the_request_is_unknown_outcome_and_not_resent(server_factory):
    server = server_factory("answer", "close")
    client = client_for(server)
    client.user_details()
    with pytest.raises(UnknownOutcome):  # a mutating call: it may have taken effect
        client.cancel_order("26010100000001")
    assert server.connections == 1 and len(server.requests) == 2  # no second copy, no second connection
    assert b"CancelOrder" in server.requests[1][1]
    client.user_details()  # the pool recovers with a new connection
    assert server.connections == 2 and len(server.requests) == 3


def test_read_timeout_is_unknown_outcome_and_sent_once(server_factory):
    server = server_factory("hang")
    client = client_for(server, timeout=0.3)
    with pytest.raises(UnknownOutcome) as info:
        client.user_details()
    assert "read timeout" in info.value.message
    assert len(server.requests) == 1


def test_connection_refused_is_not_sent_like_requests():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    url = f"http://127.0.0.1:{port}/NorenWClientTP/"
    client = NorenRestClient(url, connect_timeout_s=1.0)
    client.set_session("U1", "U1", "tok")
    with pytest.raises(NotSent) as info:
        client.user_details()
    assert type(info.value) is type(Reference(url).user_details(0))
    assert "connection failed" in info.value.message


@pytest.mark.parametrize("url", ["localhost:1234/NorenWClientTP/", "ftp://127.0.0.1/x/", "http:///x/"])
def test_an_unusable_url_is_not_sent(url):
    client = NorenRestClient(url)
    client.set_session("U1", "U1", "tok")
    with pytest.raises(NotSent):
        client.user_details()


def test_the_request_on_the_wire_is_the_one_requests_sent(server_factory):
    for auth in ("quickauth", "oauth"):
        ours_server, ref_server = server_factory(), server_factory()
        client = client_for(ours_server, auth=auth)
        client.user_details()
        reference = Reference(ref_server.url)
        body = json.dumps({"uid": "U1"}).encode()
        extra = {"Authorization": "Bearer tok"} if auth == "oauth" else {}
        reference.http.post(ref_server.url + "UserDetails", data=b"jData=" + body + (b"" if extra else b"&jKey=tok"),
                            headers={"Content-Type": "application/x-www-form-urlencoded", **extra},
                            timeout=(1.0, 2.0), allow_redirects=False)

        def parsed(raw: bytes):
            head, body = raw.split(b"\r\n\r\n", 1)
            lines = head.decode().split("\r\n")
            headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            headers["host"] = headers["host"].rsplit(":", 1)[0]  # the two servers' ports differ
            return lines[0], headers, body

        assert parsed(ours_server.requests[0][1]) == parsed(ref_server.requests[0][1])
        assert parsed(ours_server.requests[0][1])[0] == "POST /NorenWClientTP/UserDetails HTTP/1.1"


def test_keep_alive_and_close_then_reuse(server_factory):
    server = server_factory()
    client = client_for(server)
    for _ in range(3):
        client.user_details()
    assert server.connections == 1
    client.close()
    client.user_details()  # as with requests: a closed client opens a new connection on its next call
    assert server.connections == 2


def test_a_gzip_reply_is_decoded(server_factory):
    server = server_factory("gzip")
    assert client_for(server).user_details().actid == "U1"


def test_the_bearer_header_follows_a_new_token(server_factory):
    server = server_factory()
    client = client_for(server, auth="oauth")
    client.user_details()
    client.set_session("U1", "U1", "tok2")
    client.user_details()
    auth = [line for _, raw in server.requests for line in raw.split(b"\r\n") if line.startswith(b"Authorization")]
    assert auth == [b"Authorization: Bearer tok", b"Authorization: Bearer tok2"]
    client.set_session("U1", "U1", "bad\r\nX-Injected: 1")
    with pytest.raises(NotSent):  # refused before anything is written, as requests refused it
        client.user_details()
    assert len(server.requests) == 2


@pytest.mark.parametrize("raw, wrapped", [
    (u3.MaxRetryError(None, "/", u3.NewConnectionError(None, "refused")),
     lambda e: requests.exceptions.ConnectionError(e)),
    (u3.MaxRetryError(None, "/", u3.NameResolutionError("h", None, socket.gaierror(-2, "x"))),
     lambda e: requests.exceptions.ConnectionError(e)),
    (u3.MaxRetryError(None, "/", u3.ConnectTimeoutError(None, "timed out")),
     lambda e: requests.exceptions.ConnectTimeout(e)),
    (u3.ReadTimeoutError(None, "/", "read timed out"), lambda e: requests.exceptions.ReadTimeout(e)),
    (u3.ProtocolError("Connection aborted.", http.client.RemoteDisconnected("gone")),
     lambda e: requests.exceptions.ConnectionError(e)),
    (u3.ProtocolError("Connection aborted.", ConnectionResetError(104, "reset")),
     lambda e: requests.exceptions.ConnectionError(e)),
    (u3.ProtocolError("Connection broken: IncompleteRead", http.client.IncompleteRead(b"", 10)),
     lambda e: requests.exceptions.ConnectionError(e)),
    (u3.MaxRetryError(None, "/", u3.SSLError(ssl.SSLCertVerificationError(1, "bad cert"))),
     lambda e: requests.exceptions.SSLError(e)),
    (u3.MaxRetryError(None, "/", u3.SSLError(ssl.SSLError(1, "handshake"))),
     lambda e: requests.exceptions.SSLError(e)),
    (u3.ClosedPoolError(None, "closed"), lambda e: requests.exceptions.ConnectionError(e)),
    (u3.DecodeError("bad gzip"), lambda e: requests.exceptions.ContentDecodingError(e)),
    (u3.LocationParseError("http://[x"), lambda e: requests.exceptions.InvalidURL(e)),
])
def test_urllib3_errors_classify_as_requests_wrapped_them(raw, wrapped):
    """The client now sees urllib3's exceptions; HTTPAdapter.send used to wrap them (same mapping here)."""
    ours = classify_request_exception(raw, "PlaceOrder")
    theirs = classify_request_exception(wrapped(raw), "PlaceOrder")
    assert type(ours) is type(theirs), (ours, theirs)
