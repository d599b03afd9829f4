"""Pure tests of the listener's access rules (actors/access.py)."""

from __future__ import annotations

from actors.access import (
    Addresses,
    Lockout,
    bearer,
    check_signature,
    hash_password,
    password_ok,
    signature_v2,
)


def test_password_hash_round_trip_and_plain_passwords():
    stored = hash_password("correct horse")
    assert stored.startswith("scrypt$") and "correct horse" not in stored
    assert password_ok("correct horse", stored)
    assert not password_ok("wrong", stored)
    assert password_ok("plain", "plain") and not password_ok("plainx", "plain")
    assert not password_ok("", "") and not password_ok("x", None)


def test_bearer():
    assert bearer("Bearer abc") == "abc" and bearer("bearer  abc ") == "abc"
    assert bearer("Basic abc") is None and bearer(None) is None and bearer("Bearer ") is None


def test_signature_covers_timestamp_path_and_body():
    now = 1_800_000_000.0
    sig = signature_v2("s3cret", "1800000000", "/webhook", b"{}")
    assert check_signature("s3cret", sig, "1800000000", "/webhook", b"{}", now) is None
    assert check_signature("s3cret", sig, "1800000000", "/risk/halt", b"{}", now) == "signature does not match"
    assert check_signature("s3cret", sig, "1800000001", "/webhook", b"{}", now) == "signature does not match"
    assert check_signature("s3cret", sig, None, "/webhook", b"{}", now).startswith("X-Timestamp missing")
    assert "outside" in check_signature("s3cret", sig, "1800000000", "/webhook", b"{}", now + 301)
    assert check_signature("s3cret", sig, "soon", "/webhook", b"{}", now) == "X-Timestamp is not Unix seconds"
    assert check_signature("s3cret", "\u00e9" * 64, "1800000000", "/webhook", b"{}", now) == \
        "signature is not a hex digest"


def test_client_address_is_the_rightmost_untrusted_hop_only_behind_a_trusted_proxy():
    addresses = Addresses.from_config(["127.0.0.1", "10.0.0.0/8"], [])
    assert addresses.client("127.0.0.1", "198.51.100.7, 203.0.113.9, 10.1.1.1") == "203.0.113.9"
    assert addresses.client("198.51.100.1", "203.0.113.9") == "198.51.100.1"  # the peer is no proxy: ignored
    assert addresses.client("127.0.0.1", None) == "127.0.0.1"


def test_allow_ips_and_tradingview():
    tv = Addresses.from_config([], "tradingview")
    assert tv.may_send_alerts("52.89.214.238") and not tv.may_send_alerts("198.51.100.1")
    anyone = Addresses.from_config([], [])
    assert anyone.may_send_alerts("198.51.100.1")
    assert anyone.never_locked("34.212.75.30") and not anyone.never_locked("198.51.100.1")
    assert anyone.never_locked("127.0.0.1") and anyone.never_locked("::1")


def test_ten_failures_in_five_minutes_lock_out_for_fifteen():
    lockout = Lockout()
    assert not any(lockout.failed("a", 100.0 + i) for i in range(9))
    assert lockout.failed("a", 110.0)
    assert lockout.locked("a", 111.0) and lockout.locked("a", 100.0 + 900 + 9)
    assert not lockout.locked("a", 110.0 + 900)
    slow = Lockout()
    assert not any(slow.failed("b", i * 40.0) for i in range(20))  # 10 failures never within 5 minutes
