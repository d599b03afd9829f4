"""Pure tests of the watcher's PollFilter and LostTracker."""

from __future__ import annotations

from actors.watcher import LostTracker, PollFilter


# ---- PollFilter -------------------------------------------------------------------------------------

def test_a_remembered_row_is_unchanged_until_its_state_moves():
    f = PollFilter()
    key = PollFilter.key("B1", "oms1")
    assert not f.unchanged(key, ("OPEN", 0, None))
    f.remember(key, ("OPEN", 0, None))
    assert f.unchanged(key, ("OPEN", 0, None))
    assert not f.unchanged(key, ("OPEN", 5, 1.0))


def test_rows_without_broker_id_are_keyed_by_remarks():
    assert PollFilter.key(None, "oms1") != PollFilter.key(None, "oms2")


def test_forget_compares_everything_again():
    f = PollFilter()
    key = PollFilter.key("B1", "oms1")
    f.remember(key, ("OPEN", 0, None))
    f.forget()
    assert not f.unchanged(key, ("OPEN", 0, None))


# ---- LostTracker ------------------------------------------------------------------------------------

def test_lost_only_after_grace_and_enough_lookups():
    t = LostTracker(grace_s=30.0, min_lookups=3)
    pending = {"oms1": 1000.0}
    assert t.observe(pending, set(), 1040.0) == []   # 1 lookup
    assert t.observe(pending, set(), 1041.0) == []   # 2 lookups
    assert t.observe(pending, set(), 1042.0) == ["oms1"]


def test_not_lost_before_the_grace_period_however_many_lookups():
    t = LostTracker(grace_s=30.0, min_lookups=2)
    pending = {"oms1": 1000.0}
    for now in (1001.0, 1002.0, 1003.0, 1010.0, 1029.9):
        assert t.observe(pending, set(), now) == []
    assert t.observe(pending, set(), 1030.0) == ["oms1"]


def test_found_resets_the_count():
    t = LostTracker(grace_s=0.0, min_lookups=2)
    pending = {"oms1": 0.0}
    assert t.observe(pending, set(), 100.0) == []
    assert t.observe(pending, {"oms1"}, 101.0) == []
    assert t.observe(pending, set(), 102.0) == []
    assert t.observe(pending, set(), 103.0) == ["oms1"]


def test_orders_no_longer_pending_are_forgotten():
    t = LostTracker(grace_s=0.0, min_lookups=2)
    t.observe({"oms1": 0.0, "oms2": 0.0}, set(), 10.0)
    t.observe({"oms2": 0.0}, set(), 11.0)
    assert "oms1" not in t.lookups
    # oms1 coming back starts from scratch
    assert t.observe({"oms1": 0.0}, set(), 12.0) == []


def test_each_order_is_tracked_on_its_own():
    t = LostTracker(grace_s=10.0, min_lookups=1)
    pending = {"old": 0.0, "young": 95.0}
    assert t.observe(pending, {"other"}, 100.0) == ["old"]


def test_a_lost_order_is_reported_once_per_countdown():
    t = LostTracker(grace_s=0.0, min_lookups=2)
    pending = {"oms1": 0.0}
    t.observe(pending, set(), 1.0)
    assert t.observe(pending, set(), 2.0) == ["oms1"]
    assert t.observe(pending, set(), 3.0) == []
