"""Pure tests of the webhook contract: parsing, authentication, leg validation, building legs, redaction."""

from __future__ import annotations

import itertools
import json

import pytest

from actors.ingress import (
    build_orders,
    leg_problems,
    parse_webhook,
    redact,
    secret_ok,
)
from messages.alerts import WebhookAlert, WebhookLeg
from tests.symbols import NIFTY_CE, NIFTY_PE

SECRET = "s3cret-Tok3n"


def alert(**over) -> dict:
    data = {
        "secret_key": SECRET, "alert_id": "tv-123", "strategy_name": "NIFTY_STRADDLE",
        "execution_type": "ENTRY", "exchange": "NFO",
        "legs": [
            {"tradingsymbol": NIFTY_CE, "direction": "BUY", "qty": 65, "order_type": "MARKET",
             "price": 0, "trigger_price": None, "product_type": "NRML"},
            {"tradingsymbol": NIFTY_PE, "direction": "SELL", "qty": 65, "order_type": "LIMIT",
             "price": 101.5, "product_type": "MIS"},
        ],
    }
    data.update(over)
    return data


def body(data) -> bytes:
    return json.dumps(data).encode()


def leg(**over) -> dict:
    data = {"tradingsymbol": NIFTY_CE, "direction": "BUY", "qty": 65, "order_type": "MARKET",
            "product_type": "NRML"}
    data.update(over)
    return data


def counter():
    n = itertools.count(1)
    return lambda: f"cmd{next(n)}"


# ---- parse_webhook ----------------------------------------------------------------------------------

def test_valid_alert_is_accepted_with_parsed_legs():
    out = parse_webhook(body(alert()), SECRET)
    assert out.status == 202
    a = out.alert
    assert a.strategy_name == "NIFTY_STRADDLE" and a.execution_type == "ENTRY" and a.exchange == "NFO"
    assert a.alert_id == "tv-123"
    assert [(l.tradingsymbol, l.direction, l.qty, l.order_type, l.product_type) for l in a.legs] == [
        (NIFTY_CE, "BUY", 65, "MARKET", "NRML"),
        (NIFTY_PE, "SELL", 65, "LIMIT", "MIS"),
    ]
    assert a.legs[1].price == 101.5


@pytest.mark.parametrize("raw", [b'{"secret_key": "x", "legs": [', b"not json", b"", b"\xff\xfe{}"])
def test_malformed_json_is_400_with_a_readable_error(raw):
    out = parse_webhook(raw, SECRET)
    assert out.status == 400
    assert out.alert is None
    assert out.errors and all(isinstance(e, str) and e for e in out.errors)
    assert out.body["errors"] == out.errors
    assert "json" in " ".join(out.errors).lower() or "utf-8" in " ".join(out.errors).lower()


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"text"', b"42", b"null"])
def test_json_that_is_not_an_object_is_400(raw):
    out = parse_webhook(raw, SECRET)
    assert out.status == 400 and out.alert is None and out.errors


def _shape_errors(data) -> list[str]:
    out = parse_webhook(body(data), SECRET)
    assert out.status == 400, out
    assert out.alert is None
    assert out.body["errors"] == out.errors
    return out.errors


def test_missing_legs_is_400_naming_legs():
    data = alert()
    del data["legs"]
    errors = _shape_errors(data)
    assert any(e.startswith("legs") for e in errors)


def test_empty_legs_is_400_naming_legs():
    errors = _shape_errors(alert(legs=[]))
    assert any(e.startswith("legs") for e in errors)


def test_direction_hold_is_400_naming_the_leg_field_without_echoing_the_value():
    errors = _shape_errors(alert(legs=[leg(direction="HOLD")]))
    assert any(e.startswith("legs.0.direction") and "BUY" in e for e in errors)
    assert not any("HOLD" in e for e in errors), "a given value is never echoed (it could be a pasted secret)"


def test_non_numeric_qty_is_400_naming_the_leg_field():
    errors = _shape_errors(alert(legs=[leg(), leg(qty="sixty-five")]))
    assert any(e.startswith("legs.1.qty") for e in errors)


@pytest.mark.parametrize("field", ["strategy_name", "execution_type"])
def test_missing_required_top_level_field_is_400(field):
    data = alert()
    del data[field]
    assert any(e.startswith(field) for e in _shape_errors(data))


def test_unknown_execution_type_and_order_type_are_400():
    errors = _shape_errors(alert(execution_type="HOLD", legs=[leg(order_type="ICEBERG")]))
    assert any(e.startswith("execution_type") for e in errors)
    assert any(e.startswith("legs.0.order_type") for e in errors)


@pytest.mark.parametrize("given", ["wrong", "", None, 12345, SECRET.upper()])
def test_bad_or_missing_secret_is_401(given):
    data = alert(secret_key=given)
    out = parse_webhook(body(data), SECRET)
    assert out.status == 401 and out.alert is None


def test_missing_secret_key_is_401():
    data = alert()
    del data["secret_key"]
    assert parse_webhook(body(data), SECRET).status == 401


def test_no_secret_configured_accepts_nothing():
    assert parse_webhook(body(alert(secret_key="")), "").status == 401


def test_secret_key_name_is_case_insensitive():
    data = alert()
    data["SECRET_KEY"] = data.pop("secret_key")
    assert parse_webhook(body(data), SECRET).status == 202


def test_an_authenticated_request_needs_no_secret_key():
    data = alert()
    del data["secret_key"]
    raw = body(data)
    assert parse_webhook(raw, SECRET).status == 401
    assert parse_webhook(raw, SECRET, authenticated=True).status == 202


def test_secret_ok():
    assert secret_ok(SECRET, SECRET)
    assert not secret_ok(SECRET + "x", SECRET)
    assert not secret_ok(None, SECRET)
    assert not secret_ok("", "")
    assert not secret_ok(123, "123")


# ---- aliases and case-insensitivity -------------------------------------------------------------------

@pytest.mark.parametrize("given,expected", [
    ("MARKET", "MARKET"), ("MKT", "MARKET"), ("mkt", "MARKET"), ("LIMIT", "LIMIT"), ("LMT", "LIMIT"),
    ("SL", "SL"), ("SL-LMT", "SL"), ("SL-M", "SL-M"), ("SLM", "SL-M"), ("SL-MKT", "SL-M"), ("sl-mkt", "SL-M"),
])
def test_order_type_aliases(given, expected):
    assert WebhookLeg.model_validate(leg(order_type=given)).order_type == expected


@pytest.mark.parametrize("given,expected", [("NRML", "NRML"), ("M", "NRML"), ("MIS", "MIS"), ("I", "MIS"),
                                            ("CNC", "CNC"), ("C", "CNC"), ("c", "CNC")])
def test_product_aliases(given, expected):
    assert WebhookLeg.model_validate(leg(product_type=given)).product_type == expected


def test_keys_and_enum_words_are_case_insensitive():
    data = {"SECRET_KEY": SECRET, "Strategy_Name": "S1", "EXECUTION_TYPE": "exit", "Exchange": "nfo",
            "LEGS": [{"TradingSymbol": NIFTY_CE, "DIRECTION": "sell", "QTY": 65,
                      "Order_Type": "lmt", "PRICE": 10.5, "Product_Type": "i"}]}
    out = parse_webhook(body(data), SECRET)
    assert out.status == 202, out.errors
    a = out.alert
    assert (a.strategy_name, a.execution_type, a.exchange) == ("S1", "EXIT", "NFO")
    only = a.legs[0]
    assert (only.tradingsymbol, only.direction, only.qty, only.order_type, only.price, only.product_type) == (
        NIFTY_CE, "SELL", 65, "LIMIT", 10.5, "MIS")


def test_numeric_alert_id_becomes_text():
    assert WebhookAlert.model_validate(alert(alert_id=987)).alert_id == "987"


# ---- leg validation and building the legs -------------------------------------------------------------

def _orders(data):
    a = WebhookAlert.model_validate(data)
    return build_orders(a, "tv-123", "CLIENT1", "webhook", make_id=counter())


def test_build_orders_maps_every_field():
    orders = _orders(alert())
    assert [o.command_id for o in orders] == ["cmd1", "cmd2"]
    first, second = orders
    assert (first.alert_id, first.client_id, first.source, first.strategy_name, first.execution_type) == (
        "tv-123", "CLIENT1", "webhook", "NIFTY_STRADDLE", "ENTRY")
    assert (first.exchange, first.symbol, first.side, first.quantity, first.product, first.order_type) == (
        "NFO", NIFTY_CE, "BUY", 65, "NRML", "MARKET")
    assert (first.status, first.tag, first.leg_index) == ("CREATED", None, 0)
    assert (second.side, second.order_type, second.price, second.product, second.leg_index) == (
        "SELL", "LIMIT", 101.5, "MIS", 1)
    assert second.status == "CREATED"


def test_default_command_ids_are_unique_and_fit_remarks():
    a = WebhookAlert.model_validate(alert())
    ids = [o.command_id for o in build_orders(a, "x", "c", "webhook")]
    assert len(set(ids)) == 2 and all(0 < len(i) <= 40 for i in ids)


def test_qty_zero_entry_leg_fails_validation_and_holds_the_other_legs():
    orders = _orders(alert(legs=[leg(), leg(qty=0, tradingsymbol=NIFTY_PE)]))
    assert (orders[0].status, orders[0].tag) == ("FAILED", "VALIDATION_FAILED:OTHER_LEG_BLOCKED")
    assert (orders[1].status, orders[1].tag) == ("FAILED", "VALIDATION_FAILED:QTY_NOT_POSITIVE")


def test_qty_zero_exit_leg_fails_validation_while_other_exit_legs_are_created():
    orders = _orders(alert(execution_type="EXIT", legs=[leg(), leg(qty=0, tradingsymbol=NIFTY_PE)]))
    assert orders[0].status == "CREATED" and orders[0].tag is None
    assert (orders[1].status, orders[1].tag) == ("FAILED", "VALIDATION_FAILED:QTY_NOT_POSITIVE")


def test_negative_and_fractional_qty_fail_validation():
    orders = _orders(alert(legs=[leg(qty=-5), leg(qty=2.5)]))
    assert all(o.status == "FAILED" and o.tag.startswith("VALIDATION_FAILED:") for o in orders)


def test_per_leg_exchange_overrides_the_alert_exchange():
    orders = _orders(alert(exchange="NFO", legs=[leg(), leg(exchange="bfo", tradingsymbol="SENSEX")]))
    assert [o.exchange for o in orders] == ["NFO", "BFO"]
    assert all(o.status == "CREATED" for o in orders)


def test_missing_exchange_fails_validation():
    data = alert(legs=[leg()])
    del data["exchange"]
    (only,) = _orders(data)
    assert only.status == "FAILED" and only.tag.startswith("VALIDATION_FAILED:")


def _problems(exchange="NFO", **over):
    return leg_problems(WebhookLeg.model_validate(leg(**over)), exchange)


def test_valid_legs_have_no_problems():
    assert _problems() == []
    assert _problems(order_type="LIMIT", price=100) == []
    assert _problems(order_type="SL", price=100, trigger_price=99) == []
    assert _problems(order_type="SL-M", trigger_price=99) == []


def test_limit_without_price_is_a_problem():
    assert _problems(order_type="LIMIT") != []
    assert _problems(order_type="LIMIT", price=0) != []


@pytest.mark.parametrize("order_type", ["SL", "SL-M"])
def test_stop_orders_without_trigger_are_a_problem(order_type):
    assert _problems(order_type=order_type, price=100) != []
    assert _problems(order_type=order_type, price=100, trigger_price=0) != []


def test_problems_are_upper_snake_words():
    for problems in (_problems(qty=0), _problems(exchange="XYZ"), _problems(exchange=None),
                     _problems(order_type="SL"), _problems(price=-1)):
        assert problems
        assert all(p and p == p.upper() and " " not in p for p in problems)


def test_validation_tag_lists_upper_snake_reasons():
    (only,) = _orders(alert(legs=[leg(order_type="LIMIT", qty=0)]))
    reasons = only.tag.split(":", 1)[1]
    assert reasons and reasons == reasons.upper() and " " not in reasons


@pytest.mark.parametrize("price", [None, ""])
def test_market_leg_with_empty_price_is_accepted_as_zero(price):
    out = parse_webhook(body(alert(legs=[leg(price=price)])), SECRET)
    assert out.status == 202, out.errors
    assert out.alert.legs[0].price == 0.0


def test_empty_trigger_price_is_none():
    assert WebhookLeg.model_validate(leg(trigger_price="")).trigger_price is None


# ---- redaction --------------------------------------------------------------------------------------

def test_redact_removes_the_configured_secret_everywhere():
    text = f'{{"secret_key": "{SECRET}", "note": "echo {SECRET}"}}'
    out = redact(text, SECRET)
    assert SECRET not in out
    assert '"note"' in out


@pytest.mark.parametrize("text", [
    '{"secret_key": "wrong-guess-42", "strategy_name": "S"}',
    '{"SECRET_KEY":"wrong-guess-42","strategy_name":"S"}',
    '{"Secret_Key" :  "wrong-guess-42" , "strategy_name": "S"}',
    '{"secret_key": "wrong-guess-42", "legs": [',  # malformed JSON is still redacted
])
def test_redact_removes_any_secret_key_value(text):
    out = redact(text, SECRET)
    assert "wrong-guess-42" not in out
    assert "strategy_name" in out or out.endswith("[")


def test_redact_handles_escaped_quotes_in_the_value():
    out = redact(r'{"secret_key": "ab\"wrong-guess-42", "x": 1}', SECRET)
    assert "wrong-guess-42" not in out and '"x": 1' in out


def test_redact_with_no_secret_configured_leaves_other_text():
    assert redact('{"a": "b"}', "") == '{"a": "b"}'


def test_redact_removes_a_numeric_secret_key_value():
    assert "987654" not in redact('{"secret_key": 987654, "x": 1}', SECRET)


# ---- numbers JSON allows but the contract cannot mean ----------------------------------------------------

def _leg_outcome(qty=65, price=0, order_type="MARKET") -> str:
    """400, VALIDATION_FAILED, CREATED, or the exception a JSON leg leads to (python's json reads NaN)."""
    raw = json.dumps(alert(legs=[leg(qty=qty, price=price, order_type=order_type)])).encode()
    out = parse_webhook(raw, SECRET)
    if out.alert is None:
        return str(out.status)
    try:
        (only,) = build_orders(out.alert, "a1", "C1", "webhook", make_id=counter())
    except Exception as exc:  # noqa: BLE001 - the outcome under test
        return type(exc).__name__
    return "VALIDATION_FAILED" if (only.tag or "").startswith("VALIDATION_FAILED:") else only.status


def test_numeric_string_qty_is_a_number():
    assert _leg_outcome(qty="65") == "CREATED"
    assert _leg_outcome() == "CREATED"


def test_boolean_qty_is_not_a_number():
    assert _leg_outcome(qty=True) in ("400", "VALIDATION_FAILED")


@pytest.mark.parametrize("qty", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_qty_is_rejected_not_a_crash(qty):
    assert _leg_outcome(qty=qty) in ("400", "VALIDATION_FAILED")


@pytest.mark.parametrize("price", [float("nan"), float("inf")])
def test_non_finite_price_is_rejected(price):
    assert _leg_outcome(price=price, order_type="LIMIT") in ("400", "VALIDATION_FAILED")
