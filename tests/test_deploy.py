"""`oms deploy`: the generated Caddyfile and systemd unit, and the real Caddy in front of a real `oms run`.

The end-to-end test runs Debian's Caddy (`/usr/bin/caddy`, installed by .ci/run) with its internal CA on loopback:
an alert through HTTPS gets its 202, and the operator surface answers nothing through the proxy.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from runtime import deploy
from runtime.config import ConfigError, config_from_dict
from tests.symbols import NIFTY_CE

VENV_BIN = Path(sys.executable).parent
CADDY = "/usr/bin/caddy"


def _cfg(**sections):
    return config_from_dict(sections, environ={})


# ---- the texts ---------------------------------------------------------------------------------------

def test_caddyfile_passes_only_the_webhook_and_names_the_trusted_proxy():
    text = deploy.caddyfile(_cfg(service={"port": 8123, "max_body_bytes": 4096}), "oms.example.com")
    assert "\noms.example.com {\n" in text
    assert "path /webhook /webhook/*" in text and "method POST" in text
    assert "reverse_proxy 127.0.0.1:8123" in text
    assert text.count("reverse_proxy") == 1, "only the webhook is proxied"
    assert "respond 404" in text
    assert "max_size 4096" in text
    assert '#   trusted_proxies = ["127.0.0.1"]' in text
    for rehearsal in ("tls internal", "https_port", "http_port", "\tadmin", "\tbind", "skip_install_trust"):
        assert rehearsal not in text, rehearsal  # production: public certificate on 443, Caddy's defaults
    assert "\tlog" not in text, "an access log would record the path token"


def test_caddyfile_expose_operator_and_rehearsal_options():
    config = _cfg(service={"host": "0.0.0.0", "port": 8123}, operator={"port": 8200})
    text = deploy.caddyfile(config, "oms.example.com", expose_operator=True, tls_internal=True, https_port=8443,
                            http_port=8081, bind="127.0.0.1", admin="off")
    assert "reverse_proxy 127.0.0.1:8123" in text  # the webhook: the service (a wildcard host is reached on loopback)
    assert "reverse_proxy 127.0.0.1:8200" in text  # everything else: the operator's own listener
    assert "respond 404" not in text
    for line in ("\tadmin off", "\thttps_port 8443", "\thttp_port 8081", "\tbind 127.0.0.1", "\ttls internal",
                 "skip_install_trust"):
        assert line in text, line
    assert "WARNING: service.host is '0.0.0.0'" in text


def test_caddyfile_refuses_bad_input():
    config = _cfg(service={"port": 8123})
    for domain in ("https://oms.example.com", "oms.example.com:443", "a b", "x{y", ""):
        with pytest.raises(ConfigError, match="--domain"):
            deploy.caddyfile(config, domain)
    with pytest.raises(ConfigError, match="--https-port"):
        deploy.caddyfile(config, "oms.example.com", https_port=70000)
    with pytest.raises(ConfigError, match="--admin"):
        deploy.caddyfile(config, "oms.example.com", admin="0.0.0.0:2019")
    with pytest.raises(ConfigError, match="service.port is 0"):
        deploy.caddyfile(_cfg(service={"port": 0}), "oms.example.com")


def test_systemd_unit():
    config = _cfg(service={"data_dir": "state", "shutdown_drain_s": 12})
    text = deploy.systemd_unit(config, "config.toml", user="trader", workdir="/srv/oms 1")
    lines = text.splitlines()
    assert "Restart=on-failure" in lines and "RestartPreventExitStatus=2" in lines
    assert "User=trader" in lines and "WorkingDirectory=/srv/oms 1" in lines
    assert "EnvironmentFile=/etc/shoonya-oms/oms.env" in lines
    oms = Path(sys.executable).absolute().parent / "oms"
    assert f'ExecStart={oms} run --config "/srv/oms 1/config.toml"' in lines
    assert "TimeoutStopSec=42" in lines
    assert "/srv/oms 1/state" in text  # the data dir is named
    assert f"install -m 600 /dev/null /etc/shoonya-oms/oms.env" in text  # the secrets file: owner only
    for name in ("OMS_WEBHOOK_SECRET", "OMS_BROKER_PASSWORD", "OMS_BROKER_TOTP_SECRET", "OMS_BROKER_API_SECRET",
                 "OMS_OPERATOR_TOKEN"):
        assert f"#   {name}=..." in lines, name
    with pytest.raises(ConfigError, match="--env-file"):
        deploy.systemd_unit(config, "config.toml", user="trader", workdir="/srv", env_file="oms.env")


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_unit_parses(tmp_path):
    unit = tmp_path / "shoonya-oms.service"
    unit.write_text(deploy.systemd_unit(_cfg(), "config.toml", user="root", workdir=tmp_path,
                                        env_file=str(tmp_path / "oms.env"), oms="/bin/true"), encoding="utf-8")
    (tmp_path / "oms.env").write_text("OMS_WEBHOOK_SECRET=x\n", encoding="utf-8")
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in result.stderr.splitlines() if unit.name in line and "Unknown" in line]
    assert not complaints, result.stderr


def test_cli_prints_both_and_the_trusted_proxies_line(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("[service]\nport = 8124\n", encoding="utf-8")
    caddy = _oms(["deploy", "caddy", "--config", str(config), "--domain", "oms.example.com"], tmp_path)
    assert caddy.returncode == 0, caddy.stderr
    assert "reverse_proxy 127.0.0.1:8124" in caddy.stdout
    assert 'trusted_proxies = ["127.0.0.1"]' in caddy.stderr
    bad = _oms(["deploy", "caddy", "--config", str(config), "--domain", "http://x"], tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and bad.stdout == ""
    unit = _oms(["deploy", "systemd", "--user", "trader", "--workdir", str(tmp_path)], tmp_path)
    assert unit.returncode == 0, unit.stderr
    assert f"ExecStart={VENV_BIN.absolute() / 'oms'} run --config {tmp_path / 'config.toml'}" in unit.stdout


# ---- Caddy in front of oms run -----------------------------------------------------------------------

def _env(home: Path) -> dict:
    return {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": str(home), "XDG_DATA_HOME": str(home / "data"),
            "XDG_CONFIG_HOME": str(home / "config")}


def _oms(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], cwd=cwd, env=_env(cwd),
                          capture_output=True, text=True, timeout=60)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {proc.returncode}: {log.read_text()}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: {log.read_text()}")


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:  # by PID (each in its own session), never by name
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@pytest.mark.skipif(not os.path.exists(CADDY), reason="/usr/bin/caddy is missing (apt-get install caddy; .ci/run "
                                                       "installs it)")
def test_caddy_passes_the_webhook_over_https_and_hides_the_operator_surface(tmp_path, procs):
    service_port, https_port, http_port = free_port(), free_port(), free_port()
    config = tmp_path / "config.toml"
    config.write_text(f'[service]\nport = {service_port}\ndata_dir = "{tmp_path / "data"}"\nshutdown_drain_s = 1\n'
                      f'[webhook]\nsecret_key = "caddy-test-secret"\n[paper]\nport = 0\n', encoding="utf-8")
    oms_log = tmp_path / "oms.log"
    oms = subprocess.Popen([sys.executable, "-m", "runtime.cli", "run", "--config", str(config)], cwd=tmp_path,
                           env=_env(tmp_path), stdout=oms_log.open("ab"), stderr=subprocess.STDOUT,
                           start_new_session=True)
    procs.append(oms)

    made = _oms(["deploy", "caddy", "--config", str(config), "--domain", "localhost", "--tls-internal",
                 "--https-port", str(https_port), "--http-port", str(http_port), "--bind", "127.0.0.1",
                 "--admin", "off"], tmp_path)
    assert made.returncode == 0, made.stderr
    caddyfile = tmp_path / "Caddyfile"
    caddyfile.write_text(made.stdout, encoding="utf-8")
    caddy_home = tmp_path / "caddy"
    caddy_home.mkdir()
    caddy_log = tmp_path / "caddy.log"
    caddy = subprocess.Popen([CADDY, "run", "--config", str(caddyfile), "--adapter", "caddyfile"], cwd=caddy_home,
                             env=_env(caddy_home), stdout=caddy_log.open("ab"), stderr=subprocess.STDOUT,
                             start_new_session=True)
    procs.append(caddy)
    root_ca = caddy_home / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"
    base = f"https://localhost:{https_port}"

    def caddy_answers() -> bool:
        if not root_ca.exists():
            return False
        try:
            requests.get(base + "/", verify=str(root_ca), timeout=2)
        except requests.RequestException:
            return False
        return True

    wait_for(lambda: "service ready" in oms_log.read_text(), 90, "oms run", oms, oms_log)
    wait_for(caddy_answers, 60, "caddy with its internal certificate", caddy, caddy_log)

    body = {"secret_key": "caddy-test-secret", "alert_id": "via-caddy-1", "strategy_name": "S1",
            "execution_type": "ENTRY", "exchange": "NFO",
            "legs": [{"tradingsymbol": NIFTY_CE, "direction": "BUY", "qty": 65, "order_type": "MARKET",
                      "product_type": "NRML"}]}
    reply = requests.post(base + "/webhook", json=body, verify=str(root_ca), timeout=10)
    assert reply.status_code == 202, reply.text
    assert reply.json()["alert_id"] == "via-caddy-1" and len(reply.json()["orders"]) == 1

    for method, path in (("GET", "/orders"), ("GET", "/risk"), ("GET", "/diagnostics"), ("GET", "/positions"),
                         ("GET", "/health"), ("POST", "/risk/halt"), ("POST", "/orders/cancel"),
                         ("GET", "/webhook")):
        hidden = requests.request(method, base + path, json={"secret_key": "caddy-test-secret"},
                                  verify=str(root_ca), timeout=10)
        assert hidden.status_code == 404, (method, path, hidden.status_code, hidden.text)
        assert hidden.headers.get("Server") == "Caddy" and hidden.content == b"", (method, path)

    # A path that only looks like the webhook's reaches the service verbatim, which knows no such route.
    context = ssl.create_default_context(cafile=str(root_ca))
    conn = http.client.HTTPSConnection("localhost", https_port, context=context, timeout=10)
    try:
        conn.request("POST", "/webhook/../orders", body=b"{}")
        sneaky = conn.getresponse()
        data = sneaky.read()
    finally:
        conn.close()
    assert sneaky.status in (400, 401, 403, 404), (sneaky.status, data)
    assert b"command_id" not in data

    direct = requests.get(f"http://127.0.0.1:{service_port}/health", timeout=5)
    assert direct.status_code == 200  # the service itself is up; only the proxy hides it
