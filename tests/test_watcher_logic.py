"""Pure tests of the watcher's PollFilter and LostTracker."""

from __future__ import annotations

from actors.watcher import LostTracker, PollFilter
from messages.commands import BrokerOrderReport


def report(bid="B1", remarks="oms1", status="OPEN", filled=0, avg=None) -> BrokerOrderReport:
    return BrokerOrderReport(remarks=remarks, broker_order_id=bid, status=status, filled_qty=filled,
                             avg_price=avg, origin="poll")


# ---- PollFilter -------------------------------------------------------------------------------------

def test_first_poll_forwards_everything():
    f = PollFilter()
    rows = [report("B1"), report("B2", "oms2")]
    assert f.changed(rows) == rows


def test_unchanged_rows_are_not_forwarded_again():
    f = PollFilter()
    f.changed([report("B1"), report("B2", "oms2")])
    assert f.changed([report("B1"), report("B2", "oms2")]) == []


def test_a_change_of_status_fills_or_price_is_forwarded():
    f = PollFilter()
    f.changed([report("B1"), report("B2", "oms2"), report("B3", "oms3", filled=10, avg=1.0)])
    new = [report("B1", status="COMPLETE"), report("B2", "oms2", filled=5), report("B3", "oms3", filled=10, avg=2.0)]
    assert f.changed(new) == new


def test_only_the_changed_row_is_forwarded():
    f = PollFilter()
    f.changed([report("B1"), report("B2", "oms2")])
    out = f.changed([report("B1"), report("B2", "oms2", status="COMPLETE", filled=65)])
    assert [r.broker_order_id for r in out] == ["B2"]


def test_rows_without_broker_id_are_keyed_by_remarks():
    f = PollFilter()
    assert len(f.changed([report(None, "oms1"), report(None, "oms2")])) == 2
    assert f.changed([report(None, "oms1"), report(None, "oms2")]) == []


def test_forget_forwards_everything_again():
    f = PollFilter()
    rows = [report("B1"), report("B2", "oms2")]
    f.changed(rows)
    f.forget()
    assert f.changed(rows) == rows


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
