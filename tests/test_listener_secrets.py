"""Secrets never leave through the listener: not in alerts.body / alerts.error, the HTTP answer, or the log files,
however the JSON spells them. Real listener and paper exchange; plus the pure Redactor and RefusalDigest."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import requests

from actors.ingress import MAX_JSON_DEPTH, BodyError, RefusalDigest, Redactor, parse_json, parse_webhook
from tests.conftest import SECRET, alert
from tests.symbols import NIFTY_CE

BROKER_PASSWORD = "Brk-Pa55word-77"
API_SECRET = "api-SECRET-0a1b2c3d"


def _escaped(text: str) -> str:
    """Every character as a \\uXXXX escape: valid JSON, and no substring of the plain spelling."""
    return "".join(f"\\u{ord(c):04x}" for c in text)


def _partly_escaped(text: str) -> str:
    return text[:2] + _escaped(text[2:4]) + text[4:]


def _valid(**over) -> dict:
    return {**alert(tradingsymbol=NIFTY_CE), **over}


CASES = {
    # the key written JSON-escaped: "secret\u005fkey"
    "escaped-key": json.dumps(_valid(strategy_name="S1")).replace('"secret_key"', '"secret\\u005fkey"'),
    "escaped-key-wrong-guess": json.dumps(_valid(secret_key="wrong")).replace('"secret_key"', '"secret\\u005fkey"')
    .replace('"wrong"', json.dumps(SECRET[:-1] + "X")),
    # the secret pasted into another field (a 400 that used to echo it)
    "in-execution-type": json.dumps(_valid(execution_type=SECRET)),
    "in-strategy-escaped": json.dumps(_valid(strategy_name="x")).replace('"x"', f'"{_escaped(SECRET)}"'),
    "in-nested-unknown": json.dumps(_valid(note={"deep": [SECRET]})),
    "as-a-key": json.dumps(_valid(**{SECRET: 1})),
    "broker-password-in-field": json.dumps(_valid(strategy_name=BROKER_PASSWORD)),
    "api-secret-bad-auth": json.dumps(_valid(secret_key=API_SECRET)),
    # bodies that cannot be parsed: the raw text is redacted in any spelling
    "unparseable-plain": '{"secret_key": "%s", "legs": [' % SECRET,
    "unparseable-escaped": '{"note": "%s", "legs": [,' % _escaped(SECRET),
    "unparseable-partly-escaped": '{"secret\\u005fkey": "%s" "x": ]' % _partly_escaped(SECRET),
    "unparseable-stray-quote": '{"a": x", "%s"}' % _partly_escaped(BROKER_PASSWORD),
    "too-deep-with-secret": '{"secret_key": "%s", "x": %s1%s}' % (
        _escaped(SECRET), "[" * (MAX_JSON_DEPTH + 5), "]" * (MAX_JSON_DEPTH + 5)),
}
SECRETS = (SECRET, BROKER_PASSWORD, API_SECRET)


def _spellings(secret: str) -> list[str]:
    return [secret, json.dumps(secret)[1:-1], _escaped(secret), _partly_escaped(secret), repr(secret)[1:-1]]


def _leaks(text: str) -> list[str]:
    return [s for secret in SECRETS for s in _spellings(secret) if s and s in (text or "")]


@pytest.mark.parametrize("name", sorted(CASES))
def test_no_secret_in_the_answer_the_audit_row_or_the_logs(make_system, name):
    system = make_system(broker={"password": BROKER_PASSWORD, "api_secret": API_SECRET})
    reply = requests.post(system.url + "/webhook", data=CASES[name].encode(), timeout=5,
                          headers={"Content-Type": "application/json"})
    accepted = name == "escaped-key"  # a valid alert whose key is spelled with an escape
    assert reply.status_code == 202 if accepted else reply.status_code in (400, 401), (reply.status_code, reply.text)
    assert not _leaks(reply.text), reply.text
    data_dir = Path(system.config.service.data_dir)

    def audit_rows():
        with sqlite3.connect(data_dir / "orders.db") as db:
            return db.execute("SELECT body, error, alert_id, strategy_name FROM alerts").fetchall()

    rows = system.wait_until(audit_rows, 10, "the audit row")
    assert len(rows) == 1
    body, error, alert_id, strategy = rows[0]
    assert body, "the (redacted) body is kept for the audit"
    for column in (body, error, alert_id, strategy):
        assert not _leaks(column), column
    assert len(system.orders()) == (1 if accepted else 0)
    system.stop()  # every log line written and the files closed
    logs = "".join(p.read_text(encoding="utf-8", errors="replace") for p in (data_dir / "logs").glob("*"))
    assert "alert" in logs and not _leaks(logs)


def test_an_escaped_secret_key_still_authenticates_and_is_stored_redacted(make_system):
    system = make_system()
    raw = json.dumps(_valid(alert_id="esc-1")).replace('"secret_key"', '"secret\\u005fkey"')
    reply = requests.post(system.url + "/webhook", data=raw.encode(), timeout=5)
    assert reply.status_code == 202, reply.text
    with sqlite3.connect(Path(system.config.service.data_dir) / "orders.db") as db:
        (body,) = db.execute("SELECT body FROM alerts WHERE alert_id = 'esc-1'").fetchone()
    assert SECRET not in body and json.loads(body)["secret_key"] == "***"
    assert json.loads(body)["strategy_name"] == "S1"


# ---- the pure parts --------------------------------------------------------------------------------

def test_redactor_document_covers_keys_values_numbers_and_any_secret_key():
    r = Redactor([SECRET, "987654"])
    doc = {"Secret_Key ": "wrong", "a": [{"b": f"x{SECRET}y"}], SECRET: 1, "n": 987654, "ok": "S1"}
    out = json.dumps(r.document(doc))
    assert SECRET not in out and "wrong" not in out and "987654" not in out
    assert '"ok": "S1"' in out


@pytest.mark.parametrize("raw", [CASES[k] for k in CASES if k.startswith("unparseable") or k.startswith("too")])
def test_redactor_raw_handles_every_spelling(raw):
    out = Redactor(SECRETS).raw(raw)
    assert not _leaks(out), out


def test_parse_json_refuses_depth_numbers_and_bad_text_with_body_error_only():
    for body in (b"[" * 100000, b'{"a": ' + b"9" * 5000 + b"}", b'{"a": 1e' + b"9" * 60 + b"}", b"\xff",
                 b'"\\ud800"', b"{", b"[1,]"):
        with pytest.raises(BodyError):
            parse_json(body)
    assert parse_json(("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH).encode()) is not None
    assert parse_json(b'{"s": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}') == {"s": "[" * 34}


def test_parse_webhook_never_raises_and_never_echoes_input():
    out = parse_webhook(json.dumps(_valid(execution_type="HOLD-ME")).encode(), SECRET)
    assert out.status == 400 and "HOLD-ME" not in json.dumps(out.body)


def test_refusal_digest_tells_the_first_and_then_one_summary_per_window():
    now = [100.0]
    digest = RefusalDigest(window_s=60, clock=lambda: now[0])
    first = digest.add(401, "unauthorized", "1.2.3.4")
    assert first is not None and first.kind == "refused" and "1 x 401" in first.text
    assert all(digest.add(400, "invalid", f"10.0.0.{i}") is None for i in range(50))
    assert digest.due() is None  # the window is not over
    now[0] += 60
    summary = digest.due()
    assert summary is not None and "50 x 400 invalid" in summary.text and "Refused 50" in summary.text
    assert digest.due() is None  # nothing new
    now[0] += 61
    assert digest.add(413, "too_large", None) is not None
