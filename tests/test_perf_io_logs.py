"""The JSON log files (runtime/logs.py): one synchronous sink feeds events.jsonl and service.jsonl.

What must hold: the line format and routing of the two former loguru file sinks, every line in the kernel when
the log call returns (nothing queued, so nothing lost at shutdown or in a crash), the same order in both files
across threads, and size rotation with retention that a follower of the live file (`oms tail`, the bench's
EventTail) survives without losing a line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from loguru import logger

from runtime.bench import EventTail
from runtime.logs import JsonFiles, RotatingFile, remove_logging, setup_logging


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def logs(tmp_path):
    ids = setup_logging(tmp_path, "INFO", stderr=False)
    yield tmp_path / "logs"
    remove_logging(ids)


def test_lines_keep_their_format_and_routing_and_are_on_disk_when_the_call_returns(logs):
    before = time.monotonic()
    logger.bind(event="order", command_id="c1", to_status="EXECUTED", avg_price=None, _hidden="x").info(
        "order {} {}", "c1", "EXECUTED")
    logger.info("plain {}", "info")
    logger.bind(event="order", command_id="c2").debug("an event at DEBUG")
    try:
        raise ValueError("boom")
    except ValueError:
        logger.opt(exception=True).bind(event="supervisor", actor="x").error("actor died")
    after = time.monotonic()

    # Read before remove_logging: the sink buffers nothing.
    service = read_lines(logs / "service.jsonl")
    events = read_lines(logs / "events.jsonl")
    assert [r["message"] for r in service] == ["order c1 EXECUTED", "plain info", "an event at DEBUG", "actor died"]
    assert [r["message"] for r in events] == ["order c1 EXECUTED", "actor died"]  # INFO and up, with `event`

    first = service[0]
    assert list(first) == ["at", "mono", "level", "message", "event", "command_id", "to_status", "avg_price"]
    assert first["level"] == "INFO" and first["event"] == "order" and first["avg_price"] is None
    assert "_hidden" not in first
    assert before <= first["mono"] <= after
    assert first["at"][10] == "T" and len(first["at"].split("T")[1]) == len("00:00:00.000000+00:00")
    assert service[1].keys() == {"at", "mono", "level", "message"}
    assert service[2]["level"] == "DEBUG"
    assert service[3]["exception"] == "ValueError('boom')" and service[3]["level"] == "ERROR"
    assert events[0] == first and events[1] == service[3]  # the same line in both files
    # Exactly the text json.dumps(default=str) gives, separators included (the bench greps for them).
    raw = (logs / "events.jsonl").read_text(encoding="utf-8").splitlines()[0]
    assert raw == json.dumps(first) and '"event": "order"' in raw


def test_values_that_json_cannot_encode_are_written_with_str(logs):
    when = Path("/some/path")
    logger.bind(event="alert", path=when, ids={1}).info("odd values")
    line = read_lines(logs / "events.jsonl")[0]
    assert line["path"] == "/some/path" and line["ids"] == "{1}"


def test_threads_interleave_in_the_same_order_in_both_files(logs):
    threads, per_thread = 4, 300

    def writer(n: int) -> None:
        for i in range(per_thread):
            logger.bind(event="order", command_id=f"t{n}-{i}").info("order t{}-{}", n, i)
            logger.debug("noise t{}-{}", n, i)

    workers = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    service = read_lines(logs / "service.jsonl")
    events = read_lines(logs / "events.jsonl")
    assert len(events) == threads * per_thread and len(service) == 2 * threads * per_thread
    # events.jsonl is exactly the event lines of service.jsonl, in the same order, each line whole.
    assert events == [r for r in service if "event" in r]
    for lines in (service, events):
        monos = [r["mono"] for r in lines]
        assert monos == sorted(monos)
    for n in range(threads):  # each thread's own lines in the order it wrote them
        mine = [r["command_id"] for r in events if r["command_id"].startswith(f"t{n}-")]
        assert mine == [f"t{n}-{i}" for i in range(per_thread)]


def test_remove_logging_closes_the_files_and_later_records_go_nowhere(tmp_path):
    ids = setup_logging(tmp_path, "INFO", stderr=False)
    logger.bind(event="alert").info("before")
    remove_logging(ids)
    logger.bind(event="alert").info("after")
    assert [r["message"] for r in read_lines(tmp_path / "logs" / "events.jsonl")] == ["before"]
    remove_logging(ids)  # removing twice is harmless


def test_a_line_logged_right_before_sigkill_is_in_the_file(tmp_path):
    """The process is killed the moment the log call returns: the line must already be in the file."""
    script = (
        "import os, signal, sys\n"
        "from loguru import logger\n"
        "from runtime.logs import setup_logging\n"
        "logger.remove()\n"
        f"setup_logging({str(tmp_path)!r}, stderr=False)\n"
        "for i in range(200):\n"
        "    logger.bind(event='order', command_id=f'k{i}').info('order k{}', i)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", script], cwd=root, timeout=60, check=False)
    assert proc.returncode == -9
    for name in ("events.jsonl", "service.jsonl"):
        lines = read_lines(tmp_path / "logs" / name)
        assert [r["command_id"] for r in lines] == [f"k{i}" for i in range(200)]


def test_rotation_keeps_every_line_for_a_follower_and_retains_the_newest_files(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    sink = JsonFiles(logs, max_bytes=4000, keep=4)
    handler = logger.add(sink, level="DEBUG", format="{message}")
    tail = EventTail(logs / "events.jsonl")
    try:
        total = 400
        for i in range(total):
            logger.bind(event="order", command_id=f"r{i}", to_status="EXECUTED").info("order r{} done", i)
            if i % 7 == 0:
                tail.poll()  # a follower reading while the files rotate under it
        tail.poll()
    finally:
        logger.remove(handler)
        tail.stop()
    assert tail.done == {f"r{i}" for i in range(total)}  # nothing lost across the rotations

    for stem in ("events", "service"):
        files = sorted(logs.glob(f"{stem}*.jsonl"))
        assert len(files) == 4  # the live file and the 3 newest rotated ones
        rotated = [f for f in files if f.name != f"{stem}.jsonl"]
        for f in rotated:  # <stem>.<YYYY-MM-DD_HH-MM-SS_ffffff>[.<n>].jsonl, as loguru named them
            stamp = f.name[len(stem) + 1:-len(".jsonl")].split(".")[0]
            assert len(stamp) == len("2026-01-01_09-15-00_000000") and stamp[10] == "_"
        for f in files:
            assert f.stat().st_size <= 4000
        # The kept files hold the newest lines, none torn, in order: rotated ones by their stamp, then the live one.
        ordered = sorted(rotated) + [logs / f"{stem}.jsonl"]
        kept = [r["command_id"] for f in ordered for r in read_lines(f)]
        assert kept == [f"r{i}" for i in range(total - len(kept), total)]


def test_rotating_file_appends_to_an_existing_file_and_counts_its_size(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"a" * 90 + b"\n")
    f = RotatingFile(path, max_bytes=100, keep=5)
    try:
        f.write(b"b" * 5 + b"\n")  # 97 bytes: still fits
        assert path.read_bytes().endswith(b"bbbbb\n") and len(list(tmp_path.iterdir())) == 1
        f.write(b"c" * 9 + b"\n")  # 107 > 100: the old file is rotated first
        assert path.read_bytes() == b"c" * 9 + b"\n"
        assert len(list(tmp_path.glob("x.*.jsonl"))) == 1
        f.write(b"d" * 200 + b"\n")  # larger than max_bytes on its own: rotated, then written whole
        assert path.read_bytes() == b"d" * 200 + b"\n"
    finally:
        f.close()
    assert f.fd == -1
    os.stat(path)  # the live file stays in place after close
