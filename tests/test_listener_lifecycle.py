"""The listener's start and end as an operator sees them: a busy port stops `oms run` with exit 2 and one line;
a listener that stops on its own is logged, notified, and makes `oms run` exit non-zero (a supervisor restarts it)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import SECRET

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def _env(cwd: Path) -> dict:
    return {"PATH": str(VENV_BIN) + ":/usr/bin:/bin", "HOME": str(cwd)}


def _config(tmp_path: Path, paper, port: int) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[service]\ndata_dir = "{tmp_path / "data"}"\nport = {port}\n'
        f'[webhook]\nsecret_key = "{SECRET}"\n'
        f'[broker]\nmode = "shoonya"\nrest_url = "{paper.rest_url}"\nws_url = "{paper.ws_url}"\nuser_id = "T1"\n',
        encoding="utf-8")
    return path


def shut_listener(port: int) -> bool:
    """Shut down the listening socket on `port` of THIS process from outside the listener (a real fault)."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=os.dup(int(fd)))
        except OSError:
            continue
        try:
            if (sock.family == socket.AF_INET and sock.getsockname()[1] == port
                    and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)):
                sock.shutdown(socket.SHUT_RDWR)
                return True
        except OSError:
            pass
        finally:
            sock.close()
    return False


def test_a_busy_port_exits_2_with_one_line_naming_it(tmp_path, paper):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = _config(tmp_path, paper, port)
        result = subprocess.run([sys.executable, "-m", "runtime.cli", "run", "--config", str(config)], cwd=ROOT,
                                capture_output=True, text=True, timeout=60, env=_env(tmp_path))
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"127.0.0.1:{port}" in lines[0] and "service.port" in lines[0], lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    # nothing was started before the bind: no broker session, no database
    assert not (tmp_path / "data" / "orders.db").exists()


def test_a_listener_that_stops_is_logged_notified_and_sets_fatal(make_system):
    system = make_system()
    assert shut_listener(system.port)
    assert system.fatal.wait(10), "the System must learn that its listener stopped"
    assert str(system.port) in system.fatal_reason
    system.wait_until(lambda: [n for n in system.notifications()["recent"]
                               if n["kind"] == "service" and "listener" in n["text"]], 5, "the notification")


HARNESS = r"""
import sys, threading
sys.path.insert(0, {root!r})
from runtime import cli, system as system_module
from tests.test_listener_lifecycle import shut_listener

original_start = system_module.System.start

def start(self):
    original_start(self)
    threading.Timer(0.5, shut_listener, args=(self.port,)).start()
    return self

system_module.System.start = start
sys.exit(cli.main(["run", "--config", {config!r}]))
"""


def test_oms_run_exits_non_zero_when_its_listener_stops(tmp_path, paper):
    config = _config(tmp_path, paper, 0)
    script = HARNESS.format(root=str(ROOT), config=str(config))
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=90,
                            env=_env(tmp_path))
    assert result.returncode == 1, result.stderr[-2000:]
    assert "listener" in result.stderr and "stopped" in result.stderr
    logs = (tmp_path / "data" / "logs" / "service.jsonl").read_text(encoding="utf-8")
    assert "CRITICAL" in logs and "service stopped" in logs
