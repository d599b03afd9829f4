"""Loguru set-up: human-readable lines to stderr, structured JSON lines to files under <data_dir>/logs.

`events.jsonl` holds one line per alert and per order event (what `oms tail` reads); `service.jsonl` holds
every log record. Every JSON line carries `mono`, `time.monotonic()` when the record reached the sink (in the
logging thread): CLOCK_MONOTONIC is shared by every process on the machine, so `oms bench` can line these up
with the paper exchange's `arrived_mono` / `filled_mono`. No secret is ever passed to a log call; the sinks add
nothing but the record's fields.

Both JSON files are fed by ONE loguru sink (`JsonFiles`): each record is turned into JSON once and appended to
the file(s) with one unbuffered write(2) each, in the logging thread, under loguru's handler lock. So a line
is in the kernel (it survives a crash of this process, SIGKILL included) before the log call returns, and the
lines of both files are in the order the records were made. This replaces two `enqueue=True` file sinks, which
pickled every record through a multiprocessing queue to a writer thread (~400 us CPU per line against ~40).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import sys
import time
from datetime import datetime
from pathlib import Path

from loguru import logger

HUMAN_FORMAT = "<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> {message}"
ROTATE_BYTES = 50 * 1000 * 1000  # "50 MB" as loguru parses it
KEEP_FILES = 20  # the live file and the newest rotated ones, as loguru's retention=20 counts them
_INFO = logger.level("INFO").no
# json.dumps(data, default=str) builds a new encoder per call; one shared encoder gives the same text.
_ENCODER = json.JSONEncoder(default=str)


def json_line(record) -> str:
    """The JSON text of one record (no newline): at, mono, level, message, the bound extra fields, exception."""
    data = {
        "at": record["time"].astimezone().isoformat(timespec="microseconds"),
        "mono": time.monotonic(),
        "level": record["level"].name,
        "message": record["message"],
    }
    data.update({k: v for k, v in record["extra"].items() if not k.startswith("_")})
    if record["exception"] is not None:
        data["exception"] = repr(record["exception"].value)
    return _ENCODER.encode(data)


class RotatingFile:
    """An append-only file rotated by size, as loguru's `rotation="50 MB", retention=20` did.

    The live file keeps its name; a full one is renamed `<stem>.<YYYY-MM-DD_HH-MM-SS_ffffff>.<ext>` (the time it
    was started) and a new one is opened, so a reader that follows the name sees the rotation as a new inode.
    Only the `keep` newest files (the live one included) are kept. Every `write` is one write(2) on an O_APPEND
    descriptor, so nothing is ever buffered in this process.
    """

    def __init__(self, path: Path, max_bytes: int = ROTATE_BYTES, keep: int = KEEP_FILES) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self.fd = -1
        self.size = 0
        self.started = 0.0
        self._open()

    def _open(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
        st = os.fstat(self.fd)
        self.size = st.st_size
        self.started = st.st_mtime if st.st_size else time.time()

    def write(self, data: bytes) -> None:
        if self.fd < 0:  # a failed rotation left it closed: try again, as loguru's FileSink did
            self._open()
        if self.size and self.size + len(data) > self.max_bytes:
            self.rotate()
        view = memoryview(data)
        while view:  # a regular file takes it all at once; loop only for the rare short write
            written = os.write(self.fd, view)
            view = view[written:]
        self.size += len(data)

    def rotate(self) -> None:
        os.close(self.fd)
        self.fd = -1
        stem, ext = os.path.splitext(str(self.path))
        stamp = datetime.fromtimestamp(self.started).strftime("%Y-%m-%d_%H-%M-%S_%f")
        target, counter = f"{stem}.{stamp}{ext}", 1
        while os.path.exists(target):
            counter += 1
            target = f"{stem}.{stamp}.{counter}{ext}"
        try:
            os.rename(self.path, target)
        finally:
            self._open()  # the new live file, or the old one again if the rename failed
        self._retain()

    def _retain(self) -> None:
        # The live file is never a candidate: file times are coarse (a clock tick), so a new live file and
        # the rotated ones can share an mtime. Ties go to the name, whose stamp grows with time.
        stem, ext = os.path.splitext(glob.escape(str(self.path)))
        rotated = [f for f in glob.glob(f"{stem}.*{ext}") if os.path.isfile(f)]
        for old in sorted(rotated, key=lambda f: (os.stat(f).st_mtime, f), reverse=True)[self.keep - 1:]:
            try:
                os.remove(old)
            except FileNotFoundError:
                pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class JsonFiles:
    """The loguru sink behind events.jsonl and service.jsonl (see the module docstring).

    service.jsonl gets every record the handler passes (DEBUG and up); events.jsonl those of INFO and up that
    carry an `event` field. loguru calls `write` under its handler lock, so the two files never interleave.
    """

    def __init__(self, logs_dir: Path, max_bytes: int = ROTATE_BYTES, keep: int = KEEP_FILES) -> None:
        self.service = RotatingFile(logs_dir / "service.jsonl", max_bytes, keep)
        try:
            self.events = RotatingFile(logs_dir / "events.jsonl", max_bytes, keep)
        except OSError:
            self.service.close()
            raise

    def write(self, message) -> None:
        record = message.record
        data = (json_line(record) + "\n").encode("utf-8")
        if "event" in record["extra"] and record["level"].no >= _INFO:
            self.events.write(data)
        self.service.write(data)

    def stop(self) -> None:  # loguru calls this when the handler is removed
        self.events.close()
        self.service.close()


class _InterceptHandler(logging.Handler):
    """Send stdlib logging (pykka, waitress) through loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, "{}: {}", record.name, record.getMessage())


def add_stderr_sink(level: str = "INFO") -> int:
    """The human-readable lines on stderr (added once the service has started: a refused start says why in one
    line, and the JSON file has the whole start-up)."""
    return logger.add(sys.stderr, level=level, format=HUMAN_FORMAT, colorize=None, diagnose=False)


def setup_logging(data_dir: str | Path, level: str = "INFO", stderr: bool = True) -> list[int]:
    """Add the sinks; returns their ids so `remove_logging` can take them away again."""
    logs = Path(data_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    ids = []
    if stderr:
        ids.append(add_stderr_sink(level))
    # format "{message}": the sink builds its own line from the record; this keeps loguru's part cheap.
    ids.append(logger.add(JsonFiles(logs), level="DEBUG", format="{message}", colorize=False,
                          backtrace=False, diagnose=False))
    for name in ("pykka", "waitress"):
        std = logging.getLogger(name)
        if not any(isinstance(h, _InterceptHandler) for h in std.handlers):
            std.addHandler(_InterceptHandler())
        std.setLevel(logging.INFO)
        std.propagate = False
    return ids


def remove_logging(ids: list[int]) -> None:
    """Remove the sinks. Every JSON line is already written (nothing is queued); removing closes the files."""
    for handler_id in ids:
        try:
            logger.remove(handler_id)
        except ValueError:
            pass
    logger.complete()
