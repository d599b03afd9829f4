"""Pure tests (no I/O) of the NorenOMS wire models and the broker error classification."""

from __future__ import annotations

import http.client
import json
import socket

import pytest
import requests
import urllib3.exceptions as u3
from pydantic import ValidationError

from messages.noren import (
    LimitsReply,
    LoginReply,
    OrderActionReply,
    OrderBookEntry,
    OrderHistoryEntry,
    PlaceOrderReply,
    PlaceOrderRequest,
    PositionEntry,
    QuoteReply,
    SearchScripReply,
    TradeBookEntry,
    UserDetailsReply,
    WsOrderUpdate,
    WsTouchline,
    normalize_status,
)
from runtime.noren.errors import (
    BrokerProtocolError,
    BrokerRejected,
    LoginFailed,
    NotSent,
    RateLimited,
    SessionExpired,
    UnknownOutcome,
    classify_request_exception,
    error_from_emsg,
    error_from_http_status,
    is_no_data,
    is_session_expired,
)
from runtime.noren.rest import Secret, SessionInfo, _num

# --------------------------------------------------------------------------------------------------
# Sample replies (shapes from NORENOMS.md)
# --------------------------------------------------------------------------------------------------

ORDER_ROW = {
    "stat": "Ok",
    "norenordno": "24112800000123",
    "uid": "FA12345",
    "actid": "FA12345",
    "exch": "NFO",
    "tsym": "NIFTY28NOV24C24000",
    "qty": "75",
    "prc": "245.50",
    "trgprc": "0.00",
    "prd": "M",
    "trantype": "B",
    "prctyp": "LMT",
    "ret": "DAY",
    "status": "OPEN",
    "st_intrn": "OPEN",
    "remarks": "cmd-7f3a",
    "exchordid": "1100000012345678",
    "norentm": "10:15:01 28-11-2024",
    "exch_tm": "28-11-2024 10:15:01",
    "ordenttm": "1732769101",
    "token": "35001",
    "ls": "75",
    "ti": "0.05",
    "pp": "2",
}


def test_order_book_row_numbers_from_strings_and_absent_fills():
    row = OrderBookEntry.model_validate(ORDER_ROW)
    assert row.qty == 75 and isinstance(row.qty, int)
    assert row.prc == 245.5 and row.ti == 0.05 and row.ls == 75
    assert row.fillshares == 0  # absent until the first fill
    assert row.avgprc is None
    assert row.cancelqty == 0
    assert row.status == "OPEN"
    assert row.remarks == "cmd-7f3a"
    assert row.pending_qty == 75
    assert not row.is_terminal
    # unknown fields are kept
    assert OrderBookEntry.model_validate({**ORDER_ROW, "newfield": "x"}).model_extra == {"newfield": "x"}


def test_models_are_frozen():
    row = OrderBookEntry.model_validate(ORDER_ROW)
    with pytest.raises(ValidationError):
        row.status = "COMPLETE"  # type: ignore[misc]


def test_partial_fill_and_cancel_after_partial():
    partial = OrderBookEntry.model_validate({**ORDER_ROW, "fillshares": "25", "avgprc": "245.40"})
    assert partial.fillshares == 25 and partial.avgprc == 245.4 and partial.pending_qty == 50
    canceled = OrderBookEntry.model_validate(
        {**ORDER_ROW, "status": "CANCELLED", "fillshares": "25", "avgprc": "245.40", "cancelqty": "50"}
    )
    assert canceled.status == "CANCELED" and canceled.pending_qty == 0 and canceled.is_terminal


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("OPEN", "OPEN"),
        ("Open", "OPEN"),
        ("open ", "OPEN"),
        ("COMPLETE", "COMPLETE"),
        ("Complete", "COMPLETE"),
        ("CANCELED", "CANCELED"),
        ("CANCELLED", "CANCELED"),
        ("Canceled", "CANCELED"),
        ("Cancelled", "CANCELED"),
        ("REJECTED", "REJECTED"),
        ("REJECT", "REJECTED"),
        ("Rejected", "REJECTED"),
        ("EXPIRED", "EXPIRED"),
        ("TRIGGER_PENDING", "TRIGGER_PENDING"),
        ("TRIGGER PENDING", "TRIGGER_PENDING"),
        ("PENDING", "PENDING"),
        ("INVALID_STATUS_TYPE", "INVALID_STATUS_TYPE"),
        ("", None),
        (None, None),
    ],
)
def test_status_normalisation(raw, expected):
    assert normalize_status(raw) == expected
    assert OrderBookEntry.model_validate({**ORDER_ROW, "status": raw}).status == expected


def test_tolerant_blank_and_none_strings():
    row = OrderBookEntry.model_validate(
        {**ORDER_ROW, "trgprc": "None", "prc": "", "fillshares": "", "avgprc": "", "remarks": None, "qty": "75.00"}
    )
    assert row.trgprc is None and row.prc is None and row.fillshares == 0 and row.avgprc is None
    assert row.remarks is None
    assert row.qty == 75


def test_garbage_number_is_an_error():
    with pytest.raises(ValidationError):
        OrderBookEntry.model_validate({**ORDER_ROW, "qty": "seventy"})
    with pytest.raises(ValidationError):
        OrderBookEntry.model_validate({**ORDER_ROW, "qty": "7.5"})


def test_minimal_row_everything_absent():
    row = OrderBookEntry.model_validate({"stat": "Ok"})
    assert row.norenordno is None and row.qty is None and row.fillshares == 0 and row.pending_qty == 0


def test_rejected_order_row():
    row = OrderBookEntry.model_validate(
        {**ORDER_ROW, "status": "REJECTED", "rejby": "RMS", "rejreason": "Insufficient funds"}
    )
    assert row.status == "REJECTED" and row.rejreason == "Insufficient funds" and row.rejby == "RMS"


def test_order_history_rows():
    rows = [
        OrderHistoryEntry.model_validate({**ORDER_ROW, "status": "COMPLETE", "rpt": "Fill", "fillshares": "75",
                                          "avgprc": "245.00"}),
        OrderHistoryEntry.model_validate({**ORDER_ROW, "status": "OPEN", "rpt": "New"}),
        OrderHistoryEntry.model_validate({**ORDER_ROW, "status": "PENDING", "rpt": "PendingNew"}),
    ]
    assert [r.rpt for r in rows] == ["Fill", "New", "PendingNew"]
    assert rows[0].fillshares == 75 and rows[0].is_terminal


def test_trade_book_row():
    row = TradeBookEntry.model_validate(
        {**ORDER_ROW, "status": "COMPLETE", "flid": "101", "fltm": "28-11-2024 10:15:02", "flqty": "75",
         "flprc": "245.00", "fillshares": "75", "avgprc": "245.00"}
    )
    assert row.flqty == 75 and row.flprc == 245.0 and row.flid == "101"


def test_position_row():
    row = PositionEntry.model_validate(
        {"stat": "Ok", "exch": "NFO", "tsym": "NIFTY28NOV24C24000", "token": "35001", "prd": "M",
         "netqty": "-75", "netavgprc": "245.00", "daybuyqty": "0", "daysellqty": "75", "daysellavgprc": "245.00",
         "cfbuyqty": "0", "cfsellqty": "0", "lp": "240.00", "rpnl": "0.00", "urmtom": "375.00", "ls": "75",
         "ti": "0.05", "mult": "1", "prcftr": "1.000000"}
    )
    assert row.netqty == -75 and row.urmtom == 375.0 and row.rpnl == 0.0 and row.daybuyavgprc is None
    assert PositionEntry.model_validate({"stat": "Ok"}).netqty == 0


def test_limits_reply_available():
    limits = LimitsReply.model_validate(
        {"stat": "Ok", "actid": "FA12345", "cash": "100000.00", "payin": "5000.00", "marginused": "25000.50",
         "request_time": "10:15:01 28-11-2024"}
    )
    assert limits.ok and limits.available == pytest.approx(79999.5)
    assert LimitsReply.model_validate({"stat": "Ok"}).available == 0.0


def test_login_reply_hides_tokens_in_repr():
    reply = LoginReply.model_validate(
        {"stat": "Ok", "susertoken": "SECRETTOKEN123", "actid": "FA12345", "uname": "A TRADER",
         "exarr": ["NSE", "NFO"], "prarr": [{"prd": "C", "s_prdt_ali": "CNC"}], "lastaccesstime": "1732769101",
         "request_time": "10:15:01 28-11-2024"}
    )
    assert reply.ok and reply.susertoken == "SECRETTOKEN123" and reply.exarr == ["NSE", "NFO"]
    assert "SECRETTOKEN123" not in repr(reply) and "SECRETTOKEN123" not in str(reply)
    oauth = LoginReply.model_validate(
        {"stat": "Ok", "access_token": "ACCESS1", "refresh_token": "REFRESH1", "susertoken": "S1",
         "actid": "FA12345", "expires_in": "86400"}
    )
    assert oauth.expires_in == 86400 and oauth.access_token == "ACCESS1"
    assert "ACCESS1" not in repr(oauth) and "REFRESH1" not in repr(oauth)


def test_login_failure_reply():
    reply = LoginReply.model_validate(
        {"stat": "Not_Ok", "emsg": "Invalid Input : Wrong Password", "request_time": "10:15:01 28-11-2024"}
    )
    assert not reply.ok and reply.emsg == "Invalid Input : Wrong Password"


def test_small_replies():
    assert PlaceOrderReply.model_validate(
        {"stat": "Ok", "norenordno": "24112800000123", "request_time": "x"}
    ).norenordno == "24112800000123"
    assert OrderActionReply.model_validate({"stat": "Ok", "result": "24112800000123"}).result == "24112800000123"
    quote = QuoteReply.model_validate(
        {"stat": "Ok", "exch": "NFO", "tsym": "NIFTY28NOV24C24000", "token": "35001", "lp": "245.05", "ti": "0.05",
         "ls": "75", "uc": "600.00", "lc": "0.05"}
    )
    assert quote.lp == 245.05 and quote.ls == 75 and quote.uc == 600.0
    search = SearchScripReply.model_validate(
        {"stat": "Ok", "values": [{"exch": "NSE", "token": "1594", "tsym": "INFY-EQ", "ls": "1", "ti": "0.05"}]}
    )
    assert search.values[0].tsym == "INFY-EQ" and search.values[0].ls == 1
    user = UserDetailsReply.model_validate({"stat": "Ok", "uid": "FA12345", "actid": "FA12345", "exarr": ["NSE"]})
    assert user.uid == "FA12345"


def test_ws_order_update_fill_and_pcode_alias():
    update = WsOrderUpdate.model_validate(
        {"t": "om", "norenordno": "24112800000123", "uid": "FA12345", "actid": "FA12345", "exch": "NFO",
         "tsym": "NIFTY28NOV24C24000", "qty": "75", "prc": "0.00", "pcode": "M", "status": "COMPLETE",
         "reporttype": "Fill", "trantype": "B", "prctyp": "MKT", "ret": "DAY", "fillshares": "75",
         "avgprc": "245.00", "flqty": "75", "flprc": "245.00", "flid": "101", "fltm": "28-11-2024 10:15:02",
         "remarks": "cmd-7f3a", "exch_tm": "28-11-2024 10:15:02"}
    )
    assert update.prd == "M" and update.reporttype == "Fill" and update.flqty == 75 and update.flprc == 245.0
    assert update.fillshares == 75 and update.status == "COMPLETE" and update.remarks == "cmd-7f3a"
    ack = WsOrderUpdate.model_validate({"t": "om", "norenordno": "1", "status": "Canceled", "prd": "I",
                                        "reporttype": "Canceled", "remarks": None})
    assert ack.status == "CANCELED" and ack.prd == "I" and ack.flqty is None and ack.remarks is None


def test_ws_touchline_snapshot_and_delta():
    tk = WsTouchline.model_validate({"t": "tk", "e": "NFO", "tk": "35001", "ts": "NIFTY28NOV24C24000", "lp": "245.05",
                                     "pc": "1.2", "v": "120000", "ti": "0.05", "ls": "75"})
    assert tk.lp == 245.05 and tk.v == 120000 and tk.key == "NFO|35001"
    tf = WsTouchline.model_validate({"t": "tf", "e": "NFO", "tk": "35001", "lp": "246.00"})
    assert tf.lp == 246.0 and tf.v is None and tf.ts is None


# --------------------------------------------------------------------------------------------------
# PlaceOrderRequest
# --------------------------------------------------------------------------------------------------


def test_place_order_request_valid_and_invalid():
    req = PlaceOrderRequest(exch="NFO", tsym="NIFTY28NOV24C24000", qty=75, prc=0, trgprc=None, prd="M",
                            trantype="B", prctyp="MKT", remarks="cmd-1")
    assert req.ret == "DAY" and req.amo is False
    with pytest.raises(ValidationError):
        PlaceOrderRequest(exch="NFO", tsym="X", qty=0, prc=1, trgprc=None, prd="M", trantype="B", prctyp="LMT",
                          remarks="r")
    with pytest.raises(ValidationError):  # SL needs a trigger
        PlaceOrderRequest(exch="NFO", tsym="X", qty=1, prc=10, trgprc=None, prd="M", trantype="B",
                          prctyp="SL-LMT", remarks="r")
    with pytest.raises(ValidationError):  # LMT needs a price
        PlaceOrderRequest(exch="NFO", tsym="X", qty=1, prc=0, trgprc=None, prd="M", trantype="B", prctyp="LMT",
                          remarks="r")
    with pytest.raises(ValidationError):  # wire values only
        PlaceOrderRequest(exch="NFO", tsym="X", qty=1, prc=10, trgprc=None, prd="NRML", trantype="BUY",
                          prctyp="LMT", remarks="r")
    with pytest.raises(ValidationError):  # frozen
        req.qty = 2  # type: ignore[misc]


# --------------------------------------------------------------------------------------------------
# Error classification
# --------------------------------------------------------------------------------------------------


def test_emsg_classification():
    assert is_no_data('Error Occurred : 5 "no data"')
    assert not is_no_data("Rejected : ORA:Order not found")
    assert is_session_expired("Session Expired : Invalid Session Key")
    assert is_session_expired("  session expired")
    assert not is_session_expired("Invalid Input : Wrong Password")
    assert isinstance(error_from_emsg("Session Expired : Invalid Session Key", "PlaceOrder"), SessionExpired)
    rejected = error_from_emsg("Rejected : ORA:Order not found", "ModifyOrder")
    assert type(rejected) is BrokerRejected and rejected.emsg == "Rejected : ORA:Order not found"
    assert "ModifyOrder" in str(rejected)
    assert isinstance(error_from_emsg("Invalid Input : Wrong Password", "QuickAuth", login=True), LoginFailed)
    assert type(error_from_emsg(None, "X")) is BrokerRejected


def test_http_status_classification():
    assert error_from_http_status(200, "X") is None
    assert isinstance(error_from_http_status(401, "X"), SessionExpired)
    assert isinstance(error_from_http_status(403, "X"), SessionExpired)
    assert isinstance(error_from_http_status(403, "QuickAuth", login=True), LoginFailed)
    rate = error_from_http_status(429, "X")
    assert isinstance(rate, RateLimited) and isinstance(rate, NotSent) and rate.retry_safe
    for status in (500, 502, 503, 504):
        err = error_from_http_status(status, "PlaceOrder")
        assert type(err) is UnknownOutcome and not err.retry_safe and err.http_status == status
    assert isinstance(error_from_http_status(302, "X"), BrokerProtocolError)
    assert type(error_from_http_status(404, "X")) is BrokerRejected
    assert issubclass(BrokerProtocolError, UnknownOutcome)


def _refused() -> requests.ConnectionError:
    reason = u3.NewConnectionError(None, "Failed to establish a new connection: [Errno 111] Connection refused")
    return requests.ConnectionError(u3.MaxRetryError(None, "/NorenWClientTP/PlaceOrder", reason=reason))


def test_transport_exceptions_not_sent():
    assert isinstance(classify_request_exception(_refused(), "PlaceOrder"), NotSent)
    dns = u3.NameResolutionError("api.example", None, socket.gaierror(-2, "Name or service not known"))
    assert isinstance(
        classify_request_exception(requests.ConnectionError(u3.MaxRetryError(None, "/", reason=dns))), NotSent
    )
    timeout = requests.ConnectTimeout(u3.MaxRetryError(None, "/", reason=u3.ConnectTimeoutError(None, "timed out")))
    err = classify_request_exception(timeout, "PlaceOrder")
    assert isinstance(err, NotSent) and "connect timeout" in str(err)
    assert isinstance(classify_request_exception(requests.exceptions.InvalidURL("bad")), NotSent)


def test_transport_exceptions_unknown_outcome():
    read = requests.ReadTimeout(u3.ReadTimeoutError(None, "/", "Read timed out. (read timeout=5.0)"))
    assert type(classify_request_exception(read, "PlaceOrder")) is UnknownOutcome
    remote = requests.ConnectionError(
        u3.ProtocolError("Connection aborted.", http.client.RemoteDisconnected("Remote end closed connection"))
    )
    assert type(classify_request_exception(remote, "PlaceOrder")) is UnknownOutcome
    reset = requests.ConnectionError(u3.ProtocolError("Connection aborted.", ConnectionResetError(104, "reset")))
    assert type(classify_request_exception(reset, "PlaceOrder")) is UnknownOutcome
    broken = requests.ConnectionError(u3.ProtocolError("Connection aborted.", BrokenPipeError(32, "Broken pipe")))
    assert type(classify_request_exception(broken, "PlaceOrder")) is UnknownOutcome
    chunked = requests.exceptions.ChunkedEncodingError("Connection broken: IncompleteRead")
    assert type(classify_request_exception(chunked, "OrderBook")) is UnknownOutcome
    assert type(classify_request_exception(requests.RequestException("??"))) is UnknownOutcome


def test_error_messages_carry_no_request_body():
    exc = _refused()
    exc.request = requests.Request("POST", "http://x/PlaceOrder", data="jData={}&jKey=TOPSECRET").prepare()
    err = classify_request_exception(exc, "PlaceOrder")
    assert "TOPSECRET" not in str(err) and "PlaceOrder" in str(err)


# --------------------------------------------------------------------------------------------------
# Client helpers (pure)
# --------------------------------------------------------------------------------------------------


def test_secrets_are_redacted_in_repr_but_serialise_normally():
    secret = Secret("hunter2")
    assert "hunter2" not in repr(secret) and "hunter2" not in repr({"pwd": secret})
    assert json.dumps({"pwd": secret}) == '{"pwd": "hunter2"}'
    session = SessionInfo(uid="FA1", actid="FA1", token="TOKEN42")
    assert session.token == "TOKEN42" and "TOKEN42" not in repr(session)


@pytest.mark.parametrize(
    ("value", "text"),
    [(65, "65"), (245.5, "245.5"), (100.0, "100"), (0, "0"), (0.0, "0"), (0.1 + 0.2, "0.3"), (74.0025, "74.0025")],
)
def test_number_formatting(value, text):
    assert _num(value) == text
