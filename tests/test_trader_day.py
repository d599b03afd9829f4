"""Issue 10: a trader's ordinary day without losing money, through the real pipeline and a real paper exchange.

Orders placed "by hand at the broker" use the official NorenRestApiPy client, logged in to the same account as
the service. The broker's net position is read back with that client too: it is the truth every exit is judged by.
"""

from __future__ import annotations

import pytest
import requests
from NorenRestApiPy.NorenApi import NorenApi

from storage.models import LedgerAdjustment
from tests.conftest import alert, paper_orders, set_ltp
from tests.faults import FaultyRegistry
from tests.symbols import option

CE = option("NIFTY", "C", 25700)
PE = option("NIFTY", "P", 25700)
CE_WING = option("NIFTY", "C", 26200)
PE_WING = option("NIFTY", "P", 25200)
TERMINAL = ("EXECUTED", "FAILED")


class Hand(NorenApi):
    """Another client on the same account: the trader at the broker's terminal."""

    def __init__(self, exchange) -> None:
        NorenApi.__init__(self, host=exchange.rest_url, websocket=exchange.ws_url)
        reply = self.login(userid="TEST1", password="pw", twoFA="123456", vendor_code="VC", api_secret="s",
                           imei="hand")
        assert reply and reply["stat"] == "Ok"

    def trade(self, side: str, symbol: str, qty: int, price: float) -> str:
        reply = self.place_order(buy_or_sell=side[0], product_type="M", exchange="NFO", tradingsymbol=symbol,
                                 quantity=qty, discloseqty=0, price_type="LMT", price=price, remarks="by hand")
        assert reply and reply["stat"] == "Ok", reply
        return reply["norenordno"]

    def net(self, symbol: str) -> int:
        rows = self.get_positions() or []
        return sum(int(r.get("netqty") or 0) for r in rows if r.get("tsym") == symbol and r.get("prd") == "M")


def leg(symbol: str, direction: str, qty: int = 65, **more) -> dict:
    return {"tradingsymbol": symbol, "direction": direction, "qty": qty, "order_type": "MARKET",
            "product_type": "NRML", **more}


def send(system, payload) -> list[dict]:
    status, body = system.inject_alert(payload)
    assert status == 202, body
    return body["orders"]


def settle(system, answer: list[dict]) -> list[dict]:
    return [system.wait_for_status(o["command_id"], TERMINAL, timeout=15) for o in answer]


def at_paper(exchange, command_id: str) -> list[dict]:
    return [o for o in paper_orders(exchange) if o.get("remarks") == command_id]


def positions(system) -> dict[str, int]:
    rows = requests.get(f"{system.url}/positions", headers=system.operator_headers, timeout=5).json()
    return {f"{r['strategy_name']}|{r['symbol']}": r["net_qty"] for r in rows if r["net_qty"]}  # closed today: 0


def hold(system, strategy: str, legs: list[dict]) -> None:
    for order in settle(system, send(system, alert(strategy=strategy, legs=legs))):
        assert order["status"] == "EXECUTED", order


@pytest.fixture
def prices(paper):
    for symbol in (CE, PE, CE_WING, PE_WING):
        set_ltp(paper, "NFO", symbol, 100.0)
    return paper


# ---- 1. a spread never goes out one-legged ---------------------------------------------------------------

def test_a_guard_blocked_leg_holds_the_whole_short_strangle(make_system, prices):
    system = make_system()
    hold(system, "S1", [leg(CE, "BUY")])  # S1 is long the call: S2 selling it is a cross-strategy conflict
    answer = send(system, alert(strategy="S2", legs=[leg(CE, "SELL"), leg(PE, "SELL")]))
    call, put = settle(system, answer)
    assert call["tag"] == "GUARD_BLOCKED:CROSS_STRATEGY_CONFLICT"
    assert put["tag"] == "GUARD_BLOCKED:OTHER_LEG_BLOCKED"
    assert at_paper(prices, call["command_id"]) == at_paper(prices, put["command_id"]) == []


def test_a_condor_with_one_duplicate_blocked_leg_sends_no_leg(make_system, prices):
    system = make_system()
    # A resting BUY of the call wing from an earlier alert of the same strategy: that leg is a duplicate.
    resting = send(system, alert(legs=[leg(CE_WING, "BUY", order_type="LIMIT", price=1.0)]))[0]
    system.wait_for_status(resting["command_id"], "SENT_TO_BROKER")
    condor = [leg(CE, "SELL"), leg(CE_WING, "BUY"), leg(PE, "SELL"), leg(PE_WING, "BUY")]
    final = settle(system, send(system, alert(legs=condor)))
    assert [o["tag"] for o in final] == ["DUPLICATE_BLOCKED:OTHER_LEG_BLOCKED", "DUPLICATE_BLOCKED:OPEN_ORDER_EXISTS",
                                         "DUPLICATE_BLOCKED:OTHER_LEG_BLOCKED", "DUPLICATE_BLOCKED:OTHER_LEG_BLOCKED"]
    assert all(at_paper(prices, o["command_id"]) == [] for o in final)


def test_spread_legs_go_buy_first(make_system, prices):
    system = make_system()
    final = settle(system, send(system, alert(legs=[leg(CE, "SELL"), leg(CE_WING, "BUY")])))
    assert [o["status"] for o in final] == ["EXECUTED", "EXECUTED"]
    sent = [o["remarks"] for o in paper_orders(prices)]
    assert sent.index(final[1]["command_id"]) < sent.index(final[0]["command_id"])


def test_a_leg_that_cannot_be_priced_holds_the_spread(make_system, prices):
    system = make_system()
    unknown = option("NOSUCH", "C", 100)  # market protection finds no instrument: no quote
    final = settle(system, send(system, alert(legs=[leg(CE, "BUY"), leg(unknown, "SELL")])))
    assert final[1]["tag"].startswith("SEND_FAILED:")
    assert final[0]["tag"] == "SEND_FAILED:OTHER_LEG_BLOCKED"
    assert all(at_paper(prices, o["command_id"]) == [] for o in final)


# ---- 2. an EXIT never leaves a short uncovered -----------------------------------------------------------

def test_a_condor_exit_buys_back_the_shorts_before_selling_the_wings(make_system, prices):
    system = make_system()
    hold(system, "S1", [leg(CE, "SELL"), leg(CE_WING, "BUY"), leg(PE, "SELL"), leg(PE_WING, "BUY")])
    exit_legs = [leg(CE_WING, "SELL"), leg(CE, "BUY"), leg(PE_WING, "SELL"), leg(PE, "BUY")]
    final = settle(system, send(system, alert(execution_type="EXIT", legs=exit_legs)))
    assert [o["status"] for o in final] == ["EXECUTED"] * 4
    book = paper_orders(prices)
    sent = [o["remarks"] for o in book]
    buybacks = [sent.index(final[i]["command_id"]) for i in (1, 3)]
    wings = [sent.index(final[i]["command_id"]) for i in (0, 2)]
    assert max(buybacks) < min(wings)
    # and each wing was sent only after its buy-back had filled
    wing_events = system.order(final[0]["command_id"])["events"]
    assert any((e["detail"] or "").startswith("held:") for e in wing_events)
    assert positions(system) == {}


def test_a_condor_exit_whose_buy_back_the_broker_rejects_holds_the_wing(make_system, prices):
    system = make_system()
    hold(system, "S1", [leg(CE, "SELL"), leg(CE_WING, "BUY")])
    hand = Hand(prices)
    prices._server.engine._rejected_symbols.add(CE.upper())  # the exchange now refuses the buy-back
    final = settle(system, send(system, alert(execution_type="EXIT", legs=[leg(CE_WING, "SELL"), leg(CE, "BUY")])))
    wing, buyback = final
    assert buyback["tag"].startswith("BROKER_REJECTED")
    assert wing["tag"] == "GUARD_BLOCKED:OTHER_LEG_BLOCKED"
    assert at_paper(prices, wing["command_id"]) == []
    assert (hand.net(CE), hand.net(CE_WING)) == (-65, 65)  # still hedged


def test_an_exit_whose_buy_back_is_a_duplicate_holds_the_wing(make_system, prices):
    system = make_system()
    hold(system, "S1", [leg(CE, "SELL"), leg(CE_WING, "BUY")])
    resting = send(system, alert(execution_type="EXIT", legs=[leg(CE, "BUY", order_type="LIMIT", price=1.0)]))[0]
    system.wait_for_status(resting["command_id"], "SENT_TO_BROKER")
    final = settle(system, send(system, alert(execution_type="EXIT", legs=[leg(CE_WING, "SELL"), leg(CE, "BUY")])))
    assert [o["tag"] for o in final] == ["DUPLICATE_BLOCKED:OTHER_LEG_BLOCKED", "DUPLICATE_BLOCKED:OPEN_ORDER_EXISTS"]


# ---- 3. exits sized by the broker's truth ----------------------------------------------------------------

def test_an_exit_after_a_manual_square_off_sends_nothing_and_writes_the_ledger_off(make_system, prices):
    system = make_system()
    hold(system, "S1", [leg(CE, "BUY", qty=130)])
    hand = Hand(prices)
    hand.trade("SELL", CE, 130, 90.0)
    system.wait_until(lambda: hand.net(CE) == 0, 5, "the manual square-off")
    [order] = settle(system, send(system, alert(execution_type="EXIT", legs=[leg(CE, "SELL", qty=130)])))
    assert (order["status"], order["tag"]) == ("FAILED", "GUARD_BLOCKED:BROKER_FLAT")
    assert at_paper(prices, order["command_id"]) == []
    assert hand.net(CE) == 0
    system.wait_until(lambda: positions(system) == {}, 5, "the ledger written off")
    assert [(r.strategy_name, r.quantity) for r in LedgerAdjustment.select()] == [("S1", -130)]
    system.wait_until(lambda: [n for n in system.notifications()["recent"]
                               if "squared off outside the service" in n["text"]], 5, "a write-off notification")
    # the position that no longer exists does not block the next entry
    [again] = settle(system, send(system, alert(legs=[leg(CE, "BUY")])))
    assert again["status"] == "EXECUTED"


def test_an_exit_after_a_partial_manual_square_off_sends_what_the_broker_holds(make_system, prices):
    system = make_system()
    hold(system, "S1", [leg(CE, "BUY", qty=130)])
    hand = Hand(prices)
    hand.trade("SELL", CE, 65, 90.0)
    system.wait_until(lambda: hand.net(CE) == 65, 5, "the manual square-off")
    [order] = settle(system, send(system, alert(execution_type="EXIT", legs=[leg(CE, "SELL", qty=130)])))
    assert (order["status"], order["quantity"], order["filled_qty"]) == ("EXECUTED", 65, 65)
    assert hand.net(CE) == 0
    assert positions(system) == {}


def test_two_strategies_in_one_instrument_exit_first_come_first_served(make_system, prices):
    system = make_system()
    hold(system, "S1", [leg(CE, "BUY")])
    hold(system, "S2", [leg(CE, "BUY")])
    hand = Hand(prices)
    assert hand.net(CE) == 130
    hand.trade("SELL", CE, 65, 90.0)
    system.wait_until(lambda: hand.net(CE) == 65, 5, "the manual square-off")
    [first] = settle(system, send(system, alert(strategy="S1", execution_type="EXIT", legs=[leg(CE, "SELL")])))
    [second] = settle(system, send(system, alert(strategy="S2", execution_type="EXIT", legs=[leg(CE, "SELL")])))
    assert (first["status"], first["filled_qty"]) == ("EXECUTED", 65)
    assert (second["status"], second["tag"]) == ("FAILED", "GUARD_BLOCKED:BROKER_FLAT")
    assert hand.net(CE) == 0  # never across zero
    assert positions(system) == {}


def test_the_operator_exit_is_capped_by_the_broker_too(make_system, prices):
    from tests.conftest import SECRET

    system = make_system()
    hold(system, "S1", [leg(CE, "BUY", qty=130)])
    hand = Hand(prices)
    hand.trade("SELL", CE, 65, 90.0)
    system.wait_until(lambda: hand.net(CE) == 65, 5, "the manual square-off")
    reply = requests.post(f"{system.url}/positions/exit", headers=system.operator_headers, json={"secret_key": SECRET, "strategy": "S1"}, timeout=10)
    assert reply.status_code == 202, reply.text
    [order] = settle(system, reply.json()["orders"])
    assert (order["status"], order["filled_qty"]) == ("EXECUTED", 65)
    assert hand.net(CE) == 0


def test_one_legged_exit_mode_exits_the_legs_that_went_out(make_system, prices):
    system = make_system(risk={"one_legged": "exit"})
    hand = Hand(prices)
    prices._server.engine._rejected_symbols.add(PE.upper())  # the exchange refuses the second leg
    final = settle(system, send(system, alert(legs=[leg(CE, "BUY"), leg(PE, "BUY")])))
    assert final[0]["status"] == "EXECUTED" and final[1]["tag"].startswith("BROKER_REJECTED")
    exits = system.wait_until(lambda: [o for o in system.orders(strategy="S1") if o["execution_type"] == "EXIT"],
                              10, "an exit of the filled leg")
    assert [(o["symbol"], o["side"]) for o in exits] == [(CE, "SELL")]
    assert system.wait_for_status(exits[0]["command_id"], TERMINAL)["status"] == "EXECUTED"
    assert hand.net(CE) == 0
    system.wait_until(lambda: [n for n in system.notifications()["recent"] if "ONE-LEGGED" in n["text"]
                               and "exiting" in n["text"]], 5, "the one-legged notification")
    assert positions(system) == {}


def test_held_wings_survive_a_guard_restart(make_system, prices):
    """The guard dies on the buy-back's fill while the wing waits: the restarted guard finds the held wing (its
    `held:` event) and sells it once the buy-back has filled — never before, never twice."""
    system = make_system(registry=FaultyRegistry())
    hold(system, "S1", [leg(CE, "SELL"), leg(CE_WING, "BUY")])
    # The buy-back rests (a limit below the market) so that the wing is certainly held.
    answer = send(system, alert(execution_type="EXIT", legs=[leg(CE_WING, "SELL"),
                                                            leg(CE, "BUY", order_type="LIMIT", price=50.0)]))
    wing, buyback = (o["command_id"] for o in answer)
    system.wait_until(lambda: any((e["detail"] or "").startswith("held:") for e in system.order(wing)["events"]),
                      10, "the wing held")
    system.wait_for_status(buyback, "SENT_TO_BROKER")
    restarts = system.supervisor.restarts
    system.registry.inject_fault("guard", "OrderChanged", 1)
    set_ltp(prices, "NFO", CE, 40.0)  # the buy-back fills; its OrderChanged kills the guard once
    assert system.wait_for_status(buyback, "EXECUTED")["filled_qty"] == 65
    assert system.wait_for_status(wing, ("EXECUTED", "FAILED"), timeout=15)["status"] == "EXECUTED"
    assert system.supervisor.restarts > restarts
    assert len(at_paper(prices, wing)) == 1
    hand = Hand(prices)
    assert (hand.net(CE), hand.net(CE_WING)) == (0, 0)


def test_a_spread_redelivered_to_the_broker_sends_only_what_is_still_created(make_system, prices):
    """SendLegs handed again to a restarted broker after one leg was already claimed: the claimed leg is not a
    failure of the spread (no OTHER_LEG_BLOCKED), and the other leg still goes — once."""
    from messages.commands import RegisterAlert, SendLegs, TransitionOrder
    from messages.orders import NewOrder

    system = make_system()
    legs = tuple(NewOrder(command_id=f"omsredeliver{i:08d}", alert_id="redeliver", client_id="paper",
                          source="webhook", strategy_name="S1", execution_type="ENTRY", exchange="NFO", symbol=sym,
                          side=side, quantity=65, product="NRML", order_type="MARKET", leg_index=i)
                 for i, (sym, side) in enumerate(((CE_WING, "BUY"), (CE, "SELL"))))
    result = system.registry.ask("store", RegisterAlert(alert_id="redeliver", source="webhook", legs=legs,
                                                        announce=False))
    first, second = result.orders
    # the first leg was claimed (and sent) by the broker before it died
    system.registry.ask("store", TransitionOrder(command_id=first.command_id, to_status="SENT_TO_BROKER",
                                                 expect_from=("CREATED",)))
    system.inject("broker", SendLegs(orders=(first, second), together=True))
    done = system.wait_for_status(second.command_id, ("EXECUTED", "FAILED"), timeout=15)
    assert done["status"] == "EXECUTED", done
    assert len(at_paper(prices, second.command_id)) == 1 and at_paper(prices, first.command_id) == []


def test_an_exit_after_a_partial_fill_sells_only_what_filled_and_never_crosses_zero(make_system, paper_factory):
    """The entry fills in slices (65 of 130 so far) when the EXIT comes: the exit sells what the strategy and
    the broker hold (65), cancels the rest of the entry, and the broker's position never goes short."""
    exchange = paper_factory(fill_slice_qty=65, fill_delay_ms=1500)
    set_ltp(exchange, "NFO", CE, 100.0)
    system = make_system(exchange)
    hand = Hand(exchange)
    [entry] = send(system, alert(legs=[leg(CE, "BUY", qty=130)]))
    system.wait_for_status(entry["command_id"], "PARTIAL", timeout=15)
    assert system.order(entry["command_id"])["filled_qty"] == 65
    [exit_] = send(system, alert(execution_type="EXIT", legs=[leg(CE, "SELL", qty=130)]))
    done = system.wait_for_status(exit_["command_id"], ("EXECUTED", "FAILED"), timeout=15)
    assert (done["status"], done["side"]) == ("EXECUTED", "SELL") and done["quantity"] <= 65
    ended = system.wait_for_status(entry["command_id"], ("EXECUTED", "FAILED"), timeout=15)
    net = hand.net(CE)
    assert net >= 0  # never across zero
    assert net == ended["filled_qty"] - done["filled_qty"]  # what is left is exactly what filled after the exit
