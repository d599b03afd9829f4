"""How runtime/system.py wires the service: stop mirrors start, and the restart-expiry policy of recovery.

Start and stop are observed on a real service against the paper exchange: a Registry subclass records the
order in which actors are registered at start, a log sink the order in which they stop.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from loguru import logger

from runtime.registry import Registry
from runtime.system import ACTORS, LISTENERS, START_ORDER, STOP_ORDER, expired_on_restart


class RecordingRegistry(Registry):
    def __init__(self):
        super().__init__()
        self.registered: list[str] = []

    def set(self, name, ref) -> None:
        self.registered.append(name)
        super().set(name, ref)


def test_stop_order_is_the_start_order_reversed():
    assert STOP_ORDER == tuple(reversed(START_ORDER))
    assert START_ORDER[:len(LISTENERS)] == LISTENERS and set(START_ORDER) == set(LISTENERS) | set(ACTORS)


def test_a_service_stops_its_listener_first_and_its_actors_in_reverse_start_order(make_system):
    registry = RecordingRegistry()
    system = make_system(registry=registry)
    started = list(registry.registered)
    assert started == [n for n in START_ORDER if n != "operator"]  # no [operator] port: one listener

    stopped: list[str] = []
    accepting_at_first_stop: list[bool] = []

    def sink(message):
        text = message.record["message"]
        if text.startswith("actor ") and text.endswith(" stopped"):
            if not stopped:
                accepting_at_first_stop.append(system.app.accepting.is_set())
            stopped.append(text.split()[1])

    sink_id = logger.add(sink, level="DEBUG", filter=lambda r: r["name"] == "runtime.system")
    try:
        system.stop()
    finally:
        logger.remove(sink_id)
    assert stopped == list(reversed(started))
    assert accepting_at_first_stop == [False], "the listener still took alerts when the first actor stopped"


NOW = datetime(2026, 3, 18, 6, 0, tzinfo=UTC)  # 11:30 IST on a Wednesday


def test_a_recent_intent_of_today_continues():
    assert expired_on_restart((NOW - timedelta(seconds=5)).isoformat(), NOW, 60) is None


def test_an_intent_older_than_max_signal_age_expires():
    assert expired_on_restart((NOW - timedelta(seconds=61)).isoformat(), NOW, 60) == \
        "older than max_signal_age_s at restart"


def test_an_intent_of_an_earlier_trading_day_expires_whatever_the_max_age():
    # 23:50 IST yesterday: ten minutes before IST midnight, well within a generous max age.
    late = datetime(2026, 3, 18, 18, 20, tzinfo=UTC)  # 23:50 IST
    next_day = late + timedelta(minutes=20)  # 00:10 IST the next day
    assert expired_on_restart(late.isoformat(), next_day, 86_400) == "created on an earlier trading day"
    assert expired_on_restart(late.isoformat(), late + timedelta(minutes=5), 86_400) is None
