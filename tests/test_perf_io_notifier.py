"""Log-only notifications: the routine per-order kinds go to DEBUG (service.jsonl only), the rest stay at INFO,
and no notification is dropped."""

from __future__ import annotations

import json

from conftest import alert
from loguru import logger

from actors.notifier import ROUTINE


def test_routine_notifications_are_debug_the_others_info_and_none_is_dropped(make_system):
    records: list[tuple[str, str]] = []
    sink = logger.add(lambda m: records.append((m.record["level"].name, m.record["message"])), level="DEBUG",
                      format="{message}", filter=lambda r: r["message"].startswith("notify ["))
    try:
        system = make_system()
        status, body = system.inject_alert(alert(alert_id="notify-levels"))
        assert status == 202, body
        cid = body["orders"][0]["command_id"]
        assert system.wait_for_status(cid, "EXECUTED", timeout=10)["status"] == "EXECUTED"

        def kinds():
            return {n["kind"] for n in system.notifications()["recent"] if n["command_id"] in (cid, None)}

        system.wait_until(lambda: {"alert", "placed", "filled", "service"} <= kinds(), 10, "every notification")
        service_log = system.data_dir / "logs" / "service.jsonl"
        system.wait_until(lambda: sum(r[1].startswith("notify [") for r in records) >= 4, 10, "the notify lines")
    finally:
        logger.remove(sink)

    levels = {message.split("]")[0][len("notify ["):]: level for level, message in records}
    assert levels["alert"] == levels["placed"] == levels["filled"] == "DEBUG"
    assert levels["service"] == "INFO"
    assert {"alert", "placed", "filled", "partial"} == ROUTINE
    # Still written to service.jsonl (which takes DEBUG): the log-only notification is kept on disk.
    lines = [json.loads(line) for line in service_log.read_text(encoding="utf-8").splitlines()]
    assert any(r["message"].startswith("notify [filled] Filled") and r["level"] == "DEBUG" for r in lines)
    stats = system.notifications()
    assert stats["logged"] >= 4 and stats["undelivered"] == 0
