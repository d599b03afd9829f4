"""Loguru set-up: human-readable lines to stderr, structured JSON lines to files under <data_dir>/logs.

`events.jsonl` holds one line per alert and per order event (what `oms tail` reads); `service.jsonl` holds
every log record. Every JSON line carries `mono`, `time.monotonic()` when the record was formatted (in the
logging thread, before any enqueue): CLOCK_MONOTONIC is shared by every process on the machine, so `oms bench`
can line these up with the paper exchange's `arrived_mono` / `filled_mono`. No secret is ever passed to a log
call; the sinks add nothing but the record's fields.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from loguru import logger

HUMAN_FORMAT = "<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> {message}"


def _json_line(record) -> str:
    data = {
        "at": record["time"].astimezone().isoformat(timespec="microseconds"),
        "mono": time.monotonic(),
        "level": record["level"].name,
        "message": record["message"],
    }
    data.update({k: v for k, v in record["extra"].items() if not k.startswith("_")})
    if record["exception"] is not None:
        data["exception"] = repr(record["exception"].value)
    record["extra"]["_json"] = json.dumps(data, default=str)
    return "{extra[_json]}\n"


class _InterceptHandler(logging.Handler):
    """Send stdlib logging (pykka, waitress) through loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, "{}: {}", record.name, record.getMessage())


def setup_logging(data_dir: str | Path, level: str = "INFO", stderr: bool = True) -> list[int]:
    """Add the sinks; returns their ids so `remove_logging` can take them away again."""
    logs = Path(data_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    ids = []
    if stderr:
        ids.append(logger.add(sys.stderr, level=level, format=HUMAN_FORMAT, colorize=None,
                              diagnose=False))
    ids.append(logger.add(logs / "events.jsonl", level="INFO", format=_json_line, enqueue=True,
                          filter=lambda r: "event" in r["extra"], rotation="50 MB", retention=20,
                          diagnose=False))
    ids.append(logger.add(logs / "service.jsonl", level="DEBUG", format=_json_line, enqueue=True,
                          rotation="50 MB", retention=20, diagnose=False))
    for name in ("pykka", "waitress"):
        std = logging.getLogger(name)
        if not any(isinstance(h, _InterceptHandler) for h in std.handlers):
            std.addHandler(_InterceptHandler())
        std.setLevel(logging.INFO)
        std.propagate = False
    return ids


def remove_logging(ids: list[int]) -> None:
    for handler_id in ids:
        try:
            logger.remove(handler_id)
        except ValueError:
            pass
    logger.complete()
