"""One instance per account: `oms run` locks its data_dir, `oms paper` its state, for the life of the process.

Real processes: the point is what a second process sees, and what the kernel does on kill -9.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime import instance_lock
from runtime.cli import paper_lock_path, run_lock_path
from runtime.config import load_config

VENV_BIN = Path(sys.executable).parent


def _env(cwd: Path) -> dict:
    return {"PATH": str(VENV_BIN) + ":/usr/bin:/bin", "HOME": str(cwd)}


def start(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "runtime.cli", *args], cwd=cwd, env=_env(cwd),
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], cwd=cwd, env=_env(cwd),
                          capture_output=True, text=True, timeout=60)


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {proc.returncode}: "
                                 f"{log.read_text() if log else ''}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}: {log.read_text() if log else ''}")


def kill(proc: subprocess.Popen, sig=signal.SIGKILL) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    return proc.wait(timeout=30)


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            kill(proc)


# ---- the module --------------------------------------------------------------------------------------

def test_lock_api_names_the_holder_and_frees_on_release(tmp_path):
    path = tmp_path / "sub" / "x.lock"
    assert not instance_lock.is_held(path) and instance_lock.holder_pid(path) is None
    lock = instance_lock.acquire(path, "oms run")
    assert instance_lock.is_held(path) and instance_lock.holder_pid(path) == os.getpid()
    with pytest.raises(instance_lock.InstanceLocked) as refused:
        instance_lock.acquire(path, "oms run")  # flock is per open file: a second open conflicts, same process too
    assert refused.value.pid == os.getpid() and f"PID {os.getpid()}" in str(refused.value)
    lock.release()
    assert not instance_lock.is_held(path)
    assert instance_lock.holder_pid(path) is None, "a PID left in a free lock file is not a holder"
    with instance_lock.acquire(path) as again:
        assert again.held
    assert not instance_lock.is_held(path)


# ---- oms run -----------------------------------------------------------------------------------------

def test_second_oms_run_on_a_data_dir_exits_2_naming_the_pid_and_kill_9_frees_it(tmp_path, procs):
    config = tmp_path / "config.toml"
    config.write_text(f'[service]\nport = 0\ndata_dir = "{tmp_path / "data"}"\nshutdown_drain_s = 1\n'
                      f'[paper]\nport = 0\n', encoding="utf-8")
    lock = run_lock_path(load_config(config))
    first_log = tmp_path / "first.log"
    first = start(["run", "--config", str(config)], tmp_path, first_log)
    procs.append(first)
    wait_for(lambda: "service ready" in first_log.read_text(), 60, "the first service", first, first_log)
    assert instance_lock.holder_pid(lock) == first.pid
    assert "risk.enforce_trading_hours = false (broker.mode paper" in first_log.read_text()

    second = run(["run", "--config", str(config)], tmp_path)
    assert second.returncode == 2, second
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and f"PID {first.pid}" in lines[0] and "already running" in lines[0], second.stderr
    assert first.poll() is None, "the refused second instance disturbed the first"

    assert kill(first) == -signal.SIGKILL
    assert not instance_lock.is_held(lock), "the kernel drops the lock of a killed process"
    third_log = tmp_path / "third.log"
    third = start(["run", "--config", str(config)], tmp_path, third_log)
    procs.append(third)
    wait_for(lambda: "service ready" in third_log.read_text(), 60, "the restarted service", third, third_log)
    assert instance_lock.holder_pid(lock) == third.pid
    assert kill(third, signal.SIGTERM) == 0
    assert not instance_lock.is_held(lock)


# ---- oms paper ---------------------------------------------------------------------------------------

def test_second_oms_paper_on_the_same_state_exits_2_naming_the_pid(tmp_path, procs):
    config = tmp_path / "config.toml"
    config.write_text("[paper]\nport = 0\n", encoding="utf-8")
    lock = tmp_path / paper_lock_path(load_config(config), embedded=False)  # relative to the cwd of `oms paper`
    log = tmp_path / "paper.log"
    first = start(["paper", "--config", str(config)], tmp_path, log)
    procs.append(first)
    wait_for(lambda: instance_lock.holder_pid(lock) == first.pid, 30, "the first exchange's lock", first, log)

    second = run(["paper", "--config", str(config)], tmp_path)
    assert second.returncode == 2, second
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and f"PID {first.pid}" in lines[0], second.stderr
    assert first.poll() is None

    # another directory is another exchange (another state): it starts
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other_log = tmp_path / "other.log"
    other = start(["paper", "--config", str(config)], other_dir, other_log)
    procs.append(other)
    other_lock = other_dir / paper_lock_path(load_config(config), embedded=False)
    wait_for(lambda: instance_lock.holder_pid(other_lock) == other.pid, 30, "the other exchange", other, other_log)
