"""`oms bench` smoke test: a tiny run end to end (paper exchange and service as separate processes) must write
a JSON report with every key and sane types. No figure is asserted: speed depends on the machine."""

from __future__ import annotations

import json
import numbers
import subprocess
import sys

import pytest

from runtime.bench import JSON_KEYS, EventTail


def _latency(value) -> None:
    assert isinstance(value, dict), value
    for key in ("p50", "p99", "max"):
        assert isinstance(value[key], numbers.Real) and value[key] >= 0, (key, value)
    assert value["p50"] <= value["p99"] <= value["max"]


@pytest.mark.timeout(90)
def test_tiny_bench_writes_every_key(tmp_path):
    report = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "bench", "--quick", "--orders", "20", "--burst", "20",
         "--json", str(report)],
        capture_output=True, text=True, timeout=80, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "internal_ms" in run.stdout  # the human-readable table is the command's output

    data = json.loads(report.read_text())
    assert set(data) == set(JSON_KEYS)
    for key in ("ack_ms", "internal_ms", "fill_to_executed_ms_ws", "fill_to_executed_ms_poll"):
        _latency(data[key])
    assert isinstance(data["throughput_orders_per_s"], numbers.Real) and data["throughput_orders_per_s"] >= 0
    burst = data["burst"]
    assert set(burst) == {"legs", "created_s", "executed_s"}
    assert burst["legs"] == 20
    assert isinstance(burst["created_s"], numbers.Real) and burst["created_s"] > 0
    assert isinstance(burst["executed_s"], numbers.Real) and burst["executed_s"] >= burst["created_s"]
    floor = data["floor"]
    assert set(floor) == {"commit_ms", "http_rtt_ms"}
    assert all(isinstance(v, numbers.Real) and v > 0 for v in floor.values())
    assert isinstance(data["internal_over_floor"], numbers.Real) and data["internal_over_floor"] > 0


def test_event_tail_follows_a_rotated_log(tmp_path):
    """The soak writes far more than the 50 MB rotation size: the tail must not lose lines across a rotation."""
    path = tmp_path / "events.jsonl"

    def line(cid: str, status: str, mono: float) -> str:
        return json.dumps({"event": "order", "command_id": cid, "to_status": status, "mono": mono}) + "\n"

    path.write_text(line("a", "CREATED", 1.0) + line("a", "EXECUTED", 2.0))
    tail = EventTail(path)
    tail.poll()
    with path.open("a") as fh:  # written after the last read, before the rotation
        fh.write(line("b", "EXECUTED", 3.0))
    path.rename(tmp_path / "events.2026-01-01.jsonl")
    path.write_text(line("c", "FAILED", 4.0))
    tail.poll()
    assert tail.mono("a", "EXECUTED") == 2.0 and tail.mono("b", "EXECUTED") == 3.0
    assert tail.mono("c", "FAILED") == 4.0 and tail.terminal == 3 and tail.done == {"a", "b", "c"}
    tail.stop()
