"""Shared fixtures: a real paper exchange on loopback and the whole service started in-process against it.

`make_system(exchange=None, data_dir=None, clock=None, **sections)` builds a Config from nested dicts (section -> keys), points the broker at the
test's paper exchange (mode "shoonya", `risk.enforce_trading_hours = false` unless given) and a fresh data_dir under tmp_path, starts a System (with `clock`, a UTC-aware datetime factory for the risk engine, when given, and `registry`, e.g.
tests/faults.py's FaultyRegistry for tests that inject faults), and stops it at teardown.
"""

from __future__ import annotations

import itertools

import pytest
import requests

from runtime.config import PaperConfig, config_from_dict
from runtime.paper import PaperExchange
from runtime.system import System
from tests.symbols import NIFTY_CE

SECRET = "test-secret"


@pytest.fixture
def paper_factory():
    started: list[PaperExchange] = []

    def make(**paper_overrides) -> PaperExchange:
        # Lot / tick checks off (the product default is on): several service tests trade deliberate part lots
        # (freeze-split remainders, partial exits). Tests of the checks build their own exchange. Nothing is
        # persisted (no state_file): every test starts a fresh exchange.
        cfg = PaperConfig(**{"port": 0, "fill_delay_ms": 10, "enforce_lot_tick": False, **paper_overrides})
        exchange = PaperExchange(cfg)
        exchange.start()
        started.append(exchange)
        return exchange

    yield make
    for exchange in started:
        exchange.stop()


@pytest.fixture
def paper(paper_factory) -> PaperExchange:
    return paper_factory()


def paper_faults(exchange: PaperExchange, **faults) -> None:
    requests.post(f"{exchange.base_url}/paper/faults", json=faults, timeout=5).raise_for_status()


def paper_orders(exchange: PaperExchange) -> list[dict]:
    reply = requests.get(f"{exchange.base_url}/paper/orders", timeout=5)
    reply.raise_for_status()
    data = reply.json()
    return data["orders"] if isinstance(data, dict) else data


def set_ltp(exchange: PaperExchange, exch: str, tsym: str, lp: float) -> None:
    requests.post(f"{exchange.base_url}/paper/ltp", json={"exch": exch, "tsym": tsym, "lp": lp},
                  timeout=5).raise_for_status()


@pytest.fixture
def make_system(tmp_path, paper):
    systems: list[System] = []
    counter = itertools.count()

    def make(exchange: PaperExchange | None = None, data_dir=None, clock=None, registry=None, **sections) -> System:
        exchange = exchange or paper
        raw = {
            "service": {"data_dir": str(data_dir or tmp_path / f"data{next(counter)}"), "port": 0,
                        "shutdown_drain_s": 2},
            "webhook": {"secret_key": SECRET},
            "broker": {"mode": "shoonya", "rest_url": exchange.rest_url, "ws_url": exchange.ws_url,
                       "user_id": "TEST1", "poll_interval_s": 0.3, "request_timeout_s": 2},
            "telegram": {},
            # Live mode would enforce trading hours; tests run at any hour against the paper exchange.
            "risk": {"enforce_trading_hours": False},
        }
        for section, values in sections.items():
            raw.setdefault(section, {}).update(values)
        system = System(config_from_dict(raw, environ={}), listen_port=0, log_to_stderr=False, clock=clock,
                        registry=registry)
        systems.append(system)
        return system.start()

    yield make
    for system in reversed(systems):
        system.stop()


def alert(strategy="S1", execution_type="ENTRY", legs=None, alert_id=None, secret=SECRET, exchange="NFO",
          **leg_fields) -> dict:
    """A webhook payload; one MARKET BUY leg of 65 NIFTY_CE (tests/symbols.py) unless told otherwise."""
    if legs is None:
        leg = {"tradingsymbol": NIFTY_CE, "direction": "BUY", "qty": 65, "order_type": "MARKET",
               "product_type": "NRML"}
        leg.update(leg_fields)
        legs = [leg]
    body = {"secret_key": secret, "strategy_name": strategy, "execution_type": execution_type,
            "exchange": exchange, "legs": legs}
    if alert_id is not None:
        body["alert_id"] = alert_id
    return body
