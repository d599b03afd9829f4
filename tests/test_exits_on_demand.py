"""Exits on demand: POST /positions/exit and POST /orders/cancel, each through the normal pipeline and audited."""

import requests

from conftest import SECRET, alert, paper_orders
from storage.models import Alert
from tests import symbols as sym
from tests.symbols import NIFTY_CE, NIFTY_PE

TERMINAL = ("EXECUTED", "FAILED")


def _enter(system, strategy, symbol, qty=65, **leg):
    status, body = system.inject_alert(alert(strategy=strategy, alert_id=f"in-{strategy}-{symbol}",
                                             tradingsymbol=symbol, qty=qty, **leg))
    assert status == 202
    return system.wait_for_status(body["orders"][0]["command_id"], TERMINAL)


def test_exit_all_one_strategy_or_one_symbol_with_qty(make_system):
    system = make_system()
    legs = [{"tradingsymbol": s, "direction": "BUY", "qty": 65, "order_type": "MARKET", "product_type": "NRML"}
            for s in (NIFTY_CE, NIFTY_PE)]
    status, body = system.inject_alert(alert(strategy="A", alert_id="straddle", legs=legs))
    for o in body["orders"]:
        assert system.wait_for_status(o["command_id"], TERMINAL)["status"] == "EXECUTED"
    assert _enter(system, "B", sym.option("NIFTY", "C", 25800))["status"] == "EXECUTED"

    # the webhook secret authorizes nothing on the operator surface (issue 13): only the operator token does
    refused = requests.post(f"{system.url}/positions/exit", json={"secret_key": SECRET}, timeout=5)
    assert refused.status_code == 401

    # one symbol, part of it
    reply = requests.post(f"{system.url}/positions/exit", headers=system.operator_headers, json={"secret_key": SECRET, "strategy": "A",
                                                                "symbol": NIFTY_CE, "qty": 20}, timeout=5)
    assert reply.status_code == 202, reply.text
    (leg,) = reply.json()["orders"]
    done = system.wait_for_status(leg["command_id"], TERMINAL)
    assert (done["status"], done["side"], done["filled_qty"], done["execution_type"], done["source"]) == \
        ("EXECUTED", "SELL", 20, "EXIT", "manual")

    # one strategy: what A still holds
    reply = requests.post(f"{system.url}/positions/exit", headers=system.operator_headers, json={"secret_key": SECRET, "strategy": "A"}, timeout=5)
    assert reply.status_code == 202
    exits = [system.wait_for_status(o["command_id"], TERMINAL) for o in reply.json()["orders"]]
    assert sorted((o["symbol"], o["filled_qty"]) for o in exits) == [(NIFTY_CE, 45),
                                                                      (NIFTY_PE, 65)]
    positions = requests.get(f"{system.url}/positions", headers=system.operator_headers, timeout=5).json()
    # A's positions stay listed, closed today (net 0), with their realized P&L
    assert sorted((p["strategy_name"], p["net_qty"]) for p in positions) == [("A", 0), ("A", 0), ("B", 65)]

    # all: only B is left
    reply = requests.post(f"{system.url}/positions/exit", headers=system.operator_headers, json={"secret_key": SECRET}, timeout=5)
    assert reply.status_code == 202
    for o in reply.json()["orders"]:
        system.wait_for_status(o["command_id"], "EXECUTED")
    assert [p["net_qty"] for p in requests.get(f"{system.url}/positions", headers=system.operator_headers, timeout=5).json()] == [0, 0, 0]
    nothing = requests.post(f"{system.url}/positions/exit", headers=system.operator_headers, json={"secret_key": SECRET}, timeout=5)
    assert nothing.status_code == 404

    audited = [a.outcome for a in Alert.select().where(Alert.source == "manual")]
    assert audited.count("accepted") == 3
    assert Alert.select().where((Alert.source == "operator") & (Alert.outcome == "unauthorized")).exists()
    assert all(SECRET not in (a.body or "") for a in Alert.select())


def test_cancel_all_open_orders(make_system, paper):
    system = make_system()
    resting = []
    for strategy in ("A", "B"):
        status, body = system.inject_alert(alert(strategy=strategy, alert_id=f"rest-{strategy}",
                                                 order_type="LIMIT", price=1.0))
        resting.append(body["orders"][0]["command_id"])
    for cid in resting:
        system.wait_until(lambda cid=cid: (system.order(cid) or {}).get("broker_order_id"), what="placed")

    reply = requests.post(f"{system.url}/orders/cancel", headers=system.operator_headers, json={"secret_key": SECRET, "strategy": "A"}, timeout=5)
    assert reply.status_code == 202 and reply.json()["cancel_requested"] == [resting[0]]
    assert system.wait_for_status(resting[0], "FAILED")["tag"].startswith("BROKER_CANCELED")
    assert system.order(resting[1])["status"] == "SENT_TO_BROKER"  # B untouched

    reply = requests.post(f"{system.url}/orders/cancel", headers=system.operator_headers, json={"secret_key": SECRET}, timeout=5)
    assert reply.json()["cancel_requested"] == [resting[1]]
    assert system.wait_for_status(resting[1], "FAILED")["tag"].startswith("BROKER_CANCELED")
    statuses = {o["remarks"]: o["status"] for o in paper_orders(paper)}
    assert statuses[resting[0]] == statuses[resting[1]] == "CANCELED"
    assert any(a.outcome == "cancel_requested" for a in Alert.select())


def test_oms_exit_and_oms_cancel_commands(make_system, tmp_path):
    import subprocess
    import sys

    system = make_system()
    assert _enter(system, "C", sym.option("NIFTY", "C", 25900))["status"] == "EXECUTED"
    status, body = system.inject_alert(alert(strategy="D", alert_id="rest-D", order_type="LIMIT", price=1.0))
    resting = body["orders"][0]["command_id"]
    system.wait_until(lambda: (system.order(resting) or {}).get("broker_order_id"), what="placed")
    config = tmp_path / "cli.toml"
    config.write_text(f'[service]\nport = {system.port}\n[operator]\ntoken = "{system.operator_token}"\n')

    def oms(*args):
        return subprocess.run([sys.executable, "-m", "runtime.cli", *args, "--config", str(config)],
                              capture_output=True, text=True, timeout=60)

    assert oms("exit").returncode == 2
    done = oms("exit", "--symbol", sym.option("NIFTY", "C", 25900), "--qty", "5")
    assert done.returncode == 0 and done.stdout.startswith(f"EXIT {sym.option('NIFTY', 'C', 25900)}"), done.stderr
    cid = done.stdout.split()[2]
    assert system.wait_for_status(cid, TERMINAL)["filled_qty"] == 5
    cancelled = oms("cancel", "--strategy", "D")
    assert cancelled.returncode == 0 and resting in cancelled.stdout
    assert system.wait_for_status(resting, "FAILED")["tag"].startswith("BROKER_CANCELED")
