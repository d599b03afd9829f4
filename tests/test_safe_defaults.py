"""Safe defaults: live mode refuses the sample or an empty webhook secret; trading hours follow broker.mode
alone (never the URL); the shipped config.toml carries sane risk limits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from actors.risk_rules import Limits
from runtime.config import ConfigError, check_startable, config_from_dict, load_config

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
LOOPBACK = {"rest_url": "http://127.0.0.1:9/NorenWClientTP/", "ws_url": "ws://127.0.0.1:9/NorenWSTP/"}


def oms_run(config: Path, cwd: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime.cli", "run", "--config", str(config)], cwd=cwd,
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": str(VENV_BIN) + ":/usr/bin:/bin", "HOME": str(cwd), **env})


@pytest.mark.parametrize("secret_line,env", [
    ('secret_key = "change-me"', {}),
    ("", {}),
    ('secret_key = "   "', {}),
    ('secret_key = "a-real-one"', {"OMS_WEBHOOK_SECRET": "change-me"}),
], ids=["sample", "missing", "blank", "sample-from-env"])
def test_live_mode_without_a_secret_of_its_own_refuses_to_start(tmp_path, secret_line, env):
    data_dir = tmp_path / "data"
    config = tmp_path / "live.toml"
    config.write_text(f'[service]\nport = 0\ndata_dir = "{data_dir}"\n[webhook]\n{secret_line}\n'
                      f'[broker]\nmode = "shoonya"\nrest_url = "{LOOPBACK["rest_url"]}"\n'
                      f'ws_url = "{LOOPBACK["ws_url"]}"\n', encoding="utf-8")
    result = oms_run(config, tmp_path, **env)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "webhook.secret_key" in lines[0] and "shoonya" in lines[0], result.stderr
    assert "change-me" not in result.stderr
    assert not data_dir.exists(), "a refused start must leave nothing behind"


def test_the_check_lets_paper_mode_and_a_real_secret_through():
    check_startable(config_from_dict({}, environ={}))  # the embedded paper exchange: the sample is harmless
    check_startable(config_from_dict({"broker": {"mode": "shoonya"}, "webhook": {"secret_key": "x9$k2"}},
                                     environ={}))
    with pytest.raises(ConfigError):
        check_startable(config_from_dict({"broker": {"mode": "shoonya"}}, environ={}))


@pytest.mark.parametrize("broker,risk,expected", [
    ({"mode": "shoonya"}, {}, True),
    ({"mode": "shoonya", **LOOPBACK}, {}, True),  # a rehearsal against `oms paper` behaves as live
    ({"mode": "shoonya", "rest_url": "http://localhost:9/NorenWClientTP/"}, {}, True),
    ({"mode": "paper"}, {}, False),
    ({}, {}, False),
    ({"mode": "shoonya", **LOOPBACK}, {"enforce_trading_hours": False}, False),
    ({"mode": "paper"}, {"enforce_trading_hours": True}, True),
])
def test_trading_hours_follow_the_mode_never_the_url(broker, risk, expected):
    config = config_from_dict({"broker": broker, "risk": risk}, environ={})
    assert config.risk.enforce_trading_hours is expected
    assert Limits.from_config(config).enforce_trading_hours is expected


def test_the_shipped_config_has_sane_risk_limits_and_runs_paper():
    config = load_config(ROOT / "config.toml", environ={})
    r = config.risk
    assert config.broker.mode == "paper" and r.enforce_trading_hours is False
    assert r.max_daily_loss > 0 and r.max_lots_per_order > 0 and r.max_notional_per_order > 0
    assert r.max_open_positions > 0 and r.max_entries_per_second > 0 and r.max_entries_per_minute > 0
    check_startable(config)
    live = config.model_copy(update={"broker": config.broker.model_copy(update={"mode": "shoonya"})})
    with pytest.raises(ConfigError):
        check_startable(live)  # switched to live without changing the sample secret
