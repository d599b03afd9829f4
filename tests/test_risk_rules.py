"""Pure tests of actors/risk_rules.py: every rule, the trailing arithmetic, warnings, cooldown dates, entry
windows, rate windows, the state machine, the persisted format and the flatten planner. No I/O, no real time:
every call gets its `now`."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone

import pytest

from actors import risk_rules as R
from actors.risk_rules import (
    IST,
    FlattenJob,
    Limits,
    OrderFacts,
    RiskCore,
    plan_flatten,
)
from messages.orders import OrderSnapshot
from runtime.config import config_from_dict
from tests import symbols as sym
from tests.symbols import NIFTY_CE

# 2026-03-02 is a Monday.
MON, TUE, WED, THU, FRI, SAT, SUN = (date(2026, 3, d) for d in range(2, 9))


def at(day: date, hh: int = 10, mm: int = 0, ss: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hh, mm, ss, tzinfo=IST)


def order(cid="c1", execution="ENTRY", symbol=NIFTY_CE, exchange="NFO", qty=65, order_type="MARKET",
          price=0.0, trigger=None, product="NRML", side="BUY", alert="a1") -> OrderSnapshot:
    stamp = "2026-03-02T04:00:00.000000+00:00"
    return OrderSnapshot(
        command_id=cid, alert_id=alert, client_id="C1", source="webhook", strategy_name="S1",
        execution_type=execution, exchange=exchange, symbol=symbol, side=side, quantity=qty, product=product,
        order_type=order_type, price=price, trigger_price=trigger, status="CREATED", tag=None,
        broker_order_id=None, filled_qty=0, avg_price=None, created_at=stamp, updated_at=stamp)


def row(pnl=0.0, urmtom=0.0, prd="M", exch="NFO", tsym=NIFTY_CE, netqty=0, lp=None, ls=None) -> dict:
    return {"exch": exch, "tsym": tsym, "prd": prd, "netqty": netqty, "rpnl": pnl, "urmtom": urmtom, "lp": lp,
            "ls": ls}


def facts(lot=65, lp=None):
    return lambda _order: OrderFacts(lot_size=lot, last_price=lp)


def core(**limits) -> RiskCore:
    limits.setdefault("max_entries_per_second", 0)
    limits.setdefault("max_entries_per_minute", 0)
    return RiskCore(Limits(**limits))


def check(c: RiskCore, orders, now, *, lot=65, lp=None, open_keys=frozenset()) -> dict:
    return c.check_alert(list(orders), facts(lot, lp), set(open_keys), now)


# ---- PnL ------------------------------------------------------------------------------------------

def test_pnl_is_rpnl_plus_urmtom_of_non_cnc_rows_with_any_spelling():
    rows = [row(100, -250.5), row("-40", "10.5", prd="I"), row(1e4, 5e3, prd="C"), row(7, 7, prd="CNC"),
            row(5, None, prd="m"), {"prd": "M"}]
    assert R.positions_pnl(rows) == pytest.approx(100 - 250.5 - 40 + 10.5 + 5)


# ---- trailing arithmetic --------------------------------------------------------------------------

@pytest.mark.parametrize("peak,step,trail,floor", [
    (0, 0, 0, -10_000), (-3000, 5000, 0, -10_000), (4999, 5000, 0, -10_000), (5000, 5000, 5000, -5000),
    (7000, 5000, 5000, -5000), (12_000, 5000, 10_000, 0), (21_000, 5000, 20_000, 10_000), (50_000, 0, 0, -10_000),
])
def test_loss_floor_is_the_trail_level_minus_the_base(peak, step, trail, floor):
    assert R.trail_level(peak, step) == trail
    assert R.loss_floor(10_000, step, peak) == floor


def test_loss_floor_is_off_without_a_limit():
    assert R.loss_floor(0, 5000, 20_000) is None and R.warning_floor(0, 0, 0, 0.8) is None


def test_warning_floor_is_the_fraction_of_the_base_below_the_trail_level():
    assert R.warning_floor(10_000, 0, 0, 0.8) == -8000
    assert R.warning_floor(10_000, 5000, 12_000, 0.5) == 10_000 - 5000


# ---- daily loss: breach, trailing, warning ----------------------------------------------------------

def test_breach_at_exactly_minus_max_loss_once_per_day():
    c = core(max_daily_loss=1000)
    assert [e.kind for e in c.on_positions([row(-999.99)], True, at(MON))] == ["WARNING"]
    assert not c.loss_limit_hit()
    events = c.on_positions([row(-600, -400)], True, at(MON, 10, 1))
    assert [e.kind for e in events] == ["BREACH"] and c.loss_limit_hit()
    assert c.effective(at(MON, 10, 1)) == (R.HALTED, R.DAILY_LOSS_HIT)
    assert c.on_positions([row(-5000)], True, at(MON, 10, 2)) == []  # already breached today
    assert c.days[MON].breach_pnl == -1000


def test_trailing_floor_only_ratchets_up_and_can_breach_in_profit():
    c = core(max_daily_loss=10_000, trail_step=5000, warning_at=1)
    kinds = [e.kind for e in c.on_positions([row(12_500)], True, at(MON, 10))]
    assert kinds == ["FLOOR_RAISED"] and c.loss_floor() == 0 and c.days[MON].peak == 12_500
    assert c.on_positions([row(3000)], True, at(MON, 10, 5)) == []  # falling back never lowers the floor
    assert c.loss_floor() == 0
    assert c.on_positions([row(21_000)], True, at(MON, 10, 6))[0].kind == "FLOOR_RAISED"
    assert c.loss_floor() == 10_000
    assert [e.kind for e in c.on_positions([row(10_000.5)], True, at(MON, 10, 7))] == []
    assert [e.kind for e in c.on_positions([row(10_000)], True, at(MON, 10, 8))] == ["BREACH"]


def test_warning_is_given_once_per_floor_level():
    c = core(max_daily_loss=1000, trail_step=1000, warning_at=0.5)
    assert c.on_positions([row(-499)], True, at(MON, 10, 0)) == []
    assert [e.kind for e in c.on_positions([row(-500)], True, at(MON, 10, 1))] == ["WARNING"]
    assert c.on_positions([row(-700)], True, at(MON, 10, 2)) == []
    assert c.on_positions([row(-300)], True, at(MON, 10, 3)) == []  # recovering does not re-arm it
    assert c.on_positions([row(-600)], True, at(MON, 10, 4)) == []
    assert [e.kind for e in c.on_positions([row(1500)], True, at(MON, 10, 5))] == ["FLOOR_RAISED"]
    assert [e.kind for e in c.on_positions([row(500)], True, at(MON, 10, 6))] == ["WARNING"]  # new level
    assert c.on_positions([row(450)], True, at(MON, 10, 7)) == []


def test_no_separate_warning_at_100_percent():
    c = core(max_daily_loss=1000, warning_at=1.0)
    assert c.on_positions([row(-999)], True, at(MON)) == []
    assert [e.kind for e in c.on_positions([row(-1000)], True, at(MON, 10, 1))] == ["BREACH"]


def test_failed_or_empty_read_keeps_the_last_pnl():
    c = core(max_daily_loss=1000)
    c.on_positions([row(-400)], True, at(MON))
    assert c.on_positions([], False, at(MON, 10, 1)) == []
    assert c.on_positions([], True, at(MON, 10, 2)) == []
    assert c.days[MON].pnl == -400 and c.view(at(MON, 10, 3))["pnl"] == -400


def test_failed_read_does_not_clear_a_breach():
    c = core(max_daily_loss=1000)
    c.on_positions([row(-1500)], True, at(MON))
    c.on_positions([], False, at(MON, 10, 1))
    assert check(c, [order()], at(MON, 10, 2)) == {"c1": R.DAILY_LOSS_HIT}


def test_pnl_unknown_until_the_first_good_read_and_no_limit_hit():
    c = core(max_daily_loss=1000)
    c.on_positions([], False, at(MON))
    view = c.view(at(MON))
    assert view["pnl_known"] is False and view["pnl"] == 0.0 and view["headroom"] == 1000
    assert check(c, [order()], at(MON)) == {}


def test_reads_before_the_session_are_ignored_when_hours_are_enforced():
    c = core(max_daily_loss=1000, enforce_trading_hours=True)
    assert c.on_positions([row(-5000)], True, at(TUE, 2, 0)) == []  # yesterday's book before the BOD run
    assert c.days[TUE].pnl is None
    assert c.on_positions([row(-5000)], True, at(TUE, 9, 0))[0].kind == "BREACH"
    loose = core(max_daily_loss=1000)
    assert loose.on_positions([row(-5000)], True, at(TUE, 2, 0))[0].kind == "BREACH"


def test_zero_max_loss_means_no_limit():
    c = core(max_daily_loss=0)
    assert c.on_positions([row(-1e9)], True, at(MON)) == []
    assert check(c, [order()], at(MON)) == {} and c.view(at(MON))["loss_floor"] is None


# ---- the day rollover -------------------------------------------------------------------------------

def test_a_new_day_starts_fresh_and_a_breach_lasts_only_its_day():
    c = core(max_daily_loss=1000)
    c.on_positions([row(3000)], True, at(MON, 10))
    c.on_positions([row(-1000)], True, at(MON, 11))
    assert c.effective(at(MON, 23, 59)) == (R.HALTED, R.DAILY_LOSS_HIT)
    assert [e.kind for e in c.roll(at(TUE, 0, 0, 1))] == ["DAY_CLOSED"]
    assert c.effective(at(TUE, 0, 0, 1)) == (R.ACTIVE, None)
    assert (c.day.day, c.day.pnl, c.day.peak, c.day.breached_at) == (TUE, None, 0.0, None)
    assert c.days[MON].pnl == -1000 and c.days[MON].peak == 3000  # the closed day is kept
    assert check(c, [order()], at(TUE, 10)) == {}


def test_trading_day_is_the_ist_date():
    assert R.trading_day(datetime(2026, 3, 2, 18, 29, tzinfo=timezone.utc)) == MON
    assert R.trading_day(datetime(2026, 3, 2, 18, 30, tzinfo=timezone.utc)) == TUE
    with pytest.raises(ValueError):
        R.trading_day(datetime(2026, 3, 2, 10, 0))


# ---- consecutive loss days and the cooldown -------------------------------------------------------

def test_next_and_previous_trading_days_skip_weekends():
    assert R.next_trading_day(THU) == FRI and R.next_trading_day(FRI) == date(2026, 3, 9)
    assert R.next_trading_day(SAT) == date(2026, 3, 9) and R.previous_trading_day(date(2026, 3, 9)) == FRI
    assert R.previous_trading_day(SUN) == FRI


def test_loss_streak_skips_empty_days_stops_at_a_win_and_at_reset():
    history = {MON: 500.0, TUE: -10.0, WED: None, THU: 0.0, FRI: -20.0, date(2026, 3, 9): None}
    assert R.loss_streak(history, date(2026, 3, 10)) == (2, FRI)
    assert R.loss_streak(history, FRI) == (1, TUE)
    assert R.loss_streak(history, date(2026, 3, 10), reset_after=TUE) == (1, FRI)
    assert R.loss_streak({MON: 5.0}, TUE) == (0, None)


def test_cooldown_day_is_the_trading_day_after_the_last_loss_day():
    assert R.cooldown_until(TUE) == THU  # cooldown on Wednesday
    assert R.cooldown_until(FRI) == date(2026, 3, 10)  # cooldown on Monday the 9th


def test_consecutive_loss_days_start_a_cooldown_on_the_next_trading_day():
    c = RiskCore(Limits(max_loss_days=2), days={THU: R.DayState(THU, pnl=-100.0), FRI: R.DayState(FRI, pnl=-5.0)})
    events = c.roll(at(SAT, 12))
    assert [e.kind for e in events] == ["COOLDOWN"]
    assert c.streak.cooldown_until == date(2026, 3, 10) and c.streak.reset_after == FRI
    assert c.effective(at(SAT, 12)) == (R.HALTED, R.LOSS_DAYS_COOLDOWN)
    monday = date(2026, 3, 9)
    c.roll(at(monday, 9, 30))
    assert check(c, [order()], at(monday, 9, 30)) == {"c1": R.LOSS_DAYS_COOLDOWN}
    assert c.view(at(monday, 9, 30))["cooldown_until"] == "2026-03-10"
    c.resume(at(monday, 9, 31))  # the operator's resume does not lift a cooldown
    assert c.effective(at(monday, 9, 31)) == (R.HALTED, R.LOSS_DAYS_COOLDOWN)
    tuesday = date(2026, 3, 10)
    assert c.roll(at(tuesday, 9, 15)) == []  # the same loss days never count again (and no PnL to report)
    assert c.effective(at(tuesday, 9, 15)) == (R.ACTIVE, None)
    assert check(c, [order()], at(tuesday, 9, 15)) == {}


def test_a_win_or_too_few_loss_days_start_no_cooldown():
    c = RiskCore(Limits(max_loss_days=3), days={MON: R.DayState(MON, pnl=-1.0), TUE: R.DayState(TUE, pnl=-1.0),
                                                  WED: R.DayState(WED, pnl=2.0)})
    assert c.roll(at(THU)) == [] and c.effective(at(THU)) == (R.ACTIVE, None)
    c = RiskCore(Limits(max_loss_days=3), days={TUE: R.DayState(TUE, pnl=-1.0), WED: R.DayState(WED, pnl=-1.0)})
    assert c.roll(at(THU)) == [] and c.streak.loss_days == 2


def test_a_cooldown_found_late_is_over_if_its_day_has_passed():
    c = RiskCore(Limits(max_loss_days=1), days={MON: R.DayState(MON, pnl=-1.0)})
    assert c.roll(at(THU)) == []  # the cooldown was Tuesday
    assert c.effective(at(THU)) == (R.ACTIVE, None)


def test_max_loss_days_zero_is_off():
    c = RiskCore(Limits(max_loss_days=0), days={d: R.DayState(d, pnl=-1.0) for d in (MON, TUE, WED)})
    c.roll(at(THU))
    assert c.effective(at(THU)) == (R.ACTIVE, None)


# ---- entry windows ----------------------------------------------------------------------------------

@pytest.mark.parametrize("exchange,hh,mm,ss,open_", [
    ("NSE", 9, 14, 59, False), ("NSE", 9, 15, 0, True), ("NFO", 15, 29, 59, True), ("NFO", 15, 30, 0, False),
    ("BSE", 12, 0, 0, True), ("BFO", 9, 15, 0, True), ("MCX", 8, 59, 59, False), ("MCX", 9, 0, 0, True),
    ("MCX", 23, 29, 59, True), ("MCX", 23, 30, 0, False), ("CDS", 16, 59, 0, True), ("XYZ", 12, 0, 0, False),
])
def test_entry_windows_in_ist(exchange, hh, mm, ss, open_):
    assert R.in_session(exchange, at(WED, hh, mm, ss)) is open_


def test_windows_are_closed_on_weekends_and_read_utc_correctly():
    assert not R.in_session("NFO", at(SAT, 11)) and not R.in_session("MCX", at(SUN, 11))
    assert R.in_session("NFO", datetime(2026, 3, 4, 3, 45, tzinfo=timezone.utc))  # 09:15 IST
    assert not R.in_session("NFO", datetime(2026, 3, 4, 3, 44, tzinfo=timezone.utc))


@pytest.mark.parametrize("override,mode,expected", [
    (None, "paper", False),
    (None, "shoonya", True),  # whatever the URL: a rehearsal against a local oms paper enforces them too
    (True, "paper", True),
    (False, "shoonya", False),
])
def test_trading_hours_default_by_mode_alone_and_overridable(override, mode, expected):
    assert R.trading_hours_enforced(override, mode) is expected


def test_outside_the_window_entries_are_blocked_exits_pass():
    c = core(enforce_trading_hours=True)
    assert check(c, [order()], at(WED, 8, 0)) == {"c1": R.OUTSIDE_TRADING_HOURS}
    assert check(c, [order()], at(SAT, 11, 0)) == {"c1": R.OUTSIDE_TRADING_HOURS}
    assert check(c, [order(exchange="MCX", symbol=sym.future("CRUDEOIL"))], at(WED, 20, 0)) == {}
    assert check(c, [order(execution="EXIT")], at(WED, 8, 0)) == {}


def test_after_square_off_time_entries_on_that_exchange_are_blocked():
    c = core(square_off=(("NFO", R.parse_hhmm("15:15")),))
    assert check(c, [order()], at(WED, 15, 14, 59)) == {}
    assert check(c, [order(cid="c2")], at(WED, 15, 15)) == {"c2": R.AFTER_SQUARE_OFF}
    assert check(c, [order(cid="c3", exchange="NSE", symbol="INFY-EQ")], at(WED, 15, 20)) == {}


def test_square_off_is_due_once_per_trading_day():
    c = core(square_off=(("NFO", R.parse_hhmm("15:15")), ("MCX", R.parse_hhmm("23:00"))))
    assert c.due_square_offs(at(WED, 15, 14)) == []
    assert c.due_square_offs(at(WED, 15, 15)) == ["NFO"]
    assert c.due_square_offs(at(WED, 16, 0)) == []
    assert c.due_square_offs(at(WED, 23, 5)) == ["MCX"]
    assert c.due_square_offs(at(THU, 15, 16)) == ["NFO"]
    assert c.due_square_offs(at(SAT, 16, 0)) == []


@pytest.mark.parametrize("text,ok", [("15:15", True), ("9:05", True), ("24:00", False), ("15", False)])
def test_parse_hhmm(text, ok):
    if ok:
        assert R.parse_hhmm(text).strftime("%H:%M").lstrip("0") == text.lstrip("0")
    else:
        with pytest.raises(ValueError):
            R.parse_hhmm(text)


# ---- rate windows ---------------------------------------------------------------------------------

def test_rate_window_counts_the_last_second_and_minute():
    w = R.RateWindow()
    w.record(100.0, 3)
    w.record(100.5)
    assert w.counts(100.9) == (4, 4)
    assert w.counts(101.2) == (1, 4)
    assert w.counts(160.2) == (0, 1)
    assert w.counts(160.5) == (0, 0)


def test_entries_per_second_and_per_minute():
    c = core(max_entries_per_second=2, max_entries_per_minute=3)
    t = at(WED, 10)
    assert check(c, [order("a")], t) == {}
    assert check(c, [order("b")], t + timedelta(milliseconds=100)) == {}
    assert check(c, [order("c")], t + timedelta(milliseconds=200)) == {"c": R.ENTRY_RATE_PER_SECOND}
    assert check(c, [order("d")], t + timedelta(seconds=1)) == {}  # a's second is over
    assert check(c, [order("e")], t + timedelta(seconds=30)) == {"e": R.ENTRY_RATE_PER_MINUTE}
    assert check(c, [order("x", execution="EXIT")], t + timedelta(seconds=30)) == {}  # exits never count
    assert check(c, [order("f")], t + timedelta(seconds=60, milliseconds=1)) == {}


def test_a_multi_leg_alert_over_the_rate_is_blocked_whole_and_consumes_nothing():
    c = core(max_entries_per_second=2)
    t = at(WED, 10)
    assert check(c, [order("a"), order("b"), order("c")], t) == {k: R.ENTRY_RATE_PER_SECOND for k in "abc"}
    assert check(c, [order("d"), order("e")], t) == {}


# ---- lots and notional ----------------------------------------------------------------------------

@pytest.mark.parametrize("exchange,symbol,lot", [
    ("NFO", NIFTY_CE, 65), ("NFO", sym.option("BANKNIFTY", "P", 52000), 30), ("NFO", sym.future("FINNIFTY"), 60),
    ("BFO", sym.option("SENSEX", "C", 80000), 20), ("NFO", sym.future("RELIANCE"), 1), ("NSE", "NIFTY", 1),
    ("NSE", "INFY-EQ", 1),
])
def test_lot_size_fallback_table(exchange, symbol, lot):
    assert R.lot_size_fallback(exchange, symbol) == lot


def test_lots_round_a_part_lot_up():
    assert R.lots(130, 65) == 2 and R.lots(131, 65) == 3 and R.lots(5, 0) == 5


def test_max_lots_per_order_uses_the_given_lot_size():
    c = core(max_lots_per_order=2)
    assert check(c, [order(qty=130)], at(WED)) == {}
    assert check(c, [order(qty=195)], at(WED)) == {"c1": R.MAX_LOTS_EXCEEDED}
    assert check(c, [order(qty=150)], at(WED)) == {"c1": R.MAX_LOTS_EXCEEDED}  # 2.3 lots of 65
    assert check(c, [order(qty=150)], at(WED), lot=75) == {}  # the broker's lot size wins over the table


@pytest.mark.parametrize("order_type,price,trigger,lp,expected", [
    ("LIMIT", 100.0, None, None, 100.0), ("SL", 90.0, 91.0, 500.0, 90.0), ("SL-M", 0.0, 95.0, None, 95.0),
    ("MARKET", 0.0, None, 120.0, 120.0), ("MARKET", 0.0, None, None, None), ("MARKET", 0.0, None, 0.0, None),
])
def test_reference_price(order_type, price, trigger, lp, expected):
    assert R.reference_price(order(order_type=order_type, price=price, trigger=trigger), lp) == expected


def test_max_notional_per_order():
    c = core(max_notional_per_order=10_000)
    assert check(c, [order(qty=65, order_type="LIMIT", price=150.0)], at(WED)) == {}  # 9750
    assert check(c, [order(qty=65, order_type="LIMIT", price=160.0)], at(WED)) == {"c1": R.MAX_NOTIONAL_EXCEEDED}
    assert check(c, [order(qty=65)], at(WED), lp=150.0) == {}
    assert check(c, [order(qty=65)], at(WED), lp=160.0) == {"c1": R.MAX_NOTIONAL_EXCEEDED}
    assert check(c, [order(qty=65)], at(WED), lp=None) == {"c1": R.PRICE_UNKNOWN}


def test_facts_are_not_asked_for_when_no_lot_or_notional_limit_is_set():
    def boom(_order):
        raise AssertionError("facts looked up without a limit")

    assert core().check_alert([order()], boom, set(), at(WED)) == {}


# ---- open positions and alert atomicity --------------------------------------------------------------

def test_max_open_positions_counts_distinct_keys_including_the_new_ones():
    c = core(max_open_positions=2)
    held = {("NFO", "A", "NRML")}
    assert check(c, [order(symbol="B")], at(WED), open_keys=held) == {}
    assert check(c, [order(symbol="A")], at(WED), open_keys=held | {("NFO", "B", "NRML")}) == {}  # adds to A
    blocked = check(c, [order(symbol="C")], at(WED), open_keys=held | {("NFO", "B", "NRML")})
    assert blocked == {"c1": R.MAX_OPEN_POSITIONS}
    legs = [order("x", symbol="B"), order("y", symbol="C")]
    assert check(c, legs, at(WED), open_keys=held) == {"x": R.MAX_OPEN_POSITIONS, "y": R.MAX_OPEN_POSITIONS}


def test_one_blocked_leg_blocks_the_other_entry_legs_but_not_exits():
    c = core(max_lots_per_order=1)
    legs = [order("hedge", qty=65), order("big", qty=130, side="SELL"), order("out", execution="EXIT")]
    assert check(c, legs, at(WED)) == {"hedge": R.OTHER_LEG_BLOCKED, "big": R.MAX_LOTS_EXCEEDED}


# ---- the trading state ------------------------------------------------------------------------------

def test_state_machine():
    c = core()
    t = at(WED)
    assert c.effective(t) == (R.ACTIVE, None)
    assert c.reduce(t).kind == "MODE" and c.effective(t) == (R.REDUCING, R.REDUCING_ONLY)
    assert check(c, [order()], t) == {"c1": R.REDUCING_ONLY}
    assert c.halt(t) is not None and c.effective(t) == (R.HALTED, R.KILL_SWITCH)
    assert c.reduce(t) is None and c.effective(t)[0] == R.HALTED  # reduce never loosens a halt
    assert c.halt(t) is None  # no change, no event
    assert check(c, [order()], t) == {"c1": R.KILL_SWITCH}
    assert c.resume(t) is not None and c.effective(t) == (R.ACTIVE, None)
    assert c.resume(t) is None


@pytest.mark.parametrize("mode", ["reduce", "halt", "breach", "cooldown"])
def test_exits_pass_in_every_state(mode):
    c = RiskCore(Limits(max_daily_loss=100, max_loss_days=1), days={TUE: R.DayState(TUE, pnl=-1.0)})
    t = at(WED)
    if mode == "breach":
        c.on_positions([row(-500)], True, t)
    elif mode != "cooldown":
        getattr(c, mode)(t)
    else:
        c.roll(t)
    assert c.effective(t)[0] != R.ACTIVE
    assert check(c, [order(execution="EXIT"), order("c2", execution="EXIT", side="SELL")], t) == {}


def test_resume_after_a_breach_clears_the_mode_but_not_the_breach():
    c = core(max_daily_loss=100)
    c.halt(at(WED))
    c.on_positions([row(-100)], True, at(WED, 10, 1))
    c.resume(at(WED, 10, 2))
    assert c.mode.state == R.ACTIVE and c.effective(at(WED, 10, 2)) == (R.HALTED, R.DAILY_LOSS_HIT)
    assert c.effective(at(THU, 9, 0)) == (R.ACTIVE, None)


def test_view_has_state_pnl_limits_and_headroom():
    c = core(max_daily_loss=1000, trail_step=500, max_lots_per_order=4,
             square_off=(("NFO", R.parse_hhmm("15:15")),))
    c.on_positions([row(700)], True, at(WED))
    c.on_positions([row(200)], True, at(WED, 10, 1))
    view = c.view(at(WED, 10, 2))
    assert view["state"] == "ACTIVE" and view["pnl"] == 200.0 and view["max_loss"] == 1000
    assert (view["peak_pnl"], view["trail_level"], view["loss_floor"], view["headroom"]) == (700, 500, -500, 700)
    assert view["limits"]["max_lots_per_order"] == 4 and view["limits"]["square_off_time"] == {"NFO": "15:15"}
    json.dumps(view)


# ---- persistence ------------------------------------------------------------------------------------

def test_state_round_trips_through_the_persisted_rows():
    c = RiskCore(Limits(max_daily_loss=1000, max_loss_days=1, trail_step=500),
                 days={TUE: R.DayState(TUE, pnl=-50.0)})
    c.roll(at(WED, 9))
    c.reduce(at(WED, 9))
    c.on_positions([row(600)], True, at(WED, 10))
    c.on_positions([row(-500)], True, at(WED, 11))
    c.add_job(FlattenJob(reason="DAILY_LOSS_HIT", started_at="2026-03-04T05:30:00.000000+00:00"))
    rows = c.take_dirty()
    assert set(rows) == {"trading_state", "streak", "flatten", "day:2026-03-04"}
    assert c.take_dirty() == {}
    assert json.loads(rows["trading_state"])["state"] == "REDUCING"
    day = json.loads(rows["day:2026-03-04"])
    assert (day["pnl"], day["peak"], day["breach_pnl"]) == (-500, 600, -500) and day["breached_at"]
    assert json.loads(rows["streak"])["cooldown_until"] == "2026-03-05"  # TUE loss -> WED cooldown
    assert json.loads(rows["flatten"])["jobs"][0]["reason"] == "DAILY_LOSS_HIT"

    back = RiskCore.load(c.limits, {**rows, "day:2026-03-03": R.DayState(TUE, pnl=-50.0).to_json()})
    assert back.effective(at(WED, 12)) == (R.HALTED, R.DAILY_LOSS_HIT)
    assert back.roll(at(WED, 12)) == []  # the streak of today was already evaluated
    assert back.days[date(2026, 3, 4)].peak == 600 and back.loss_floor() == -500
    assert back.jobs[0].reason == "DAILY_LOSS_HIT" and back.mode.state == R.REDUCING
    # Wednesday closed as a loss day (max_loss_days=1): Thursday is a cooldown day, Friday the mode again.
    assert [e.kind for e in back.roll(at(THU, 9))] == ["DAY_CLOSED", "FLATTEN_EXPIRED", "COOLDOWN"]
    assert back.effective(at(THU, 9)) == (R.HALTED, R.LOSS_DAYS_COOLDOWN)
    back.roll(at(FRI, 9))
    assert back.effective(at(FRI, 9)) == (R.REDUCING, R.REDUCING_ONLY)


def test_an_ordinary_pnl_change_is_a_soft_change_and_a_material_one_is_not():
    c = core(max_daily_loss=1000, trail_step=500, warning_at=1)
    c.roll(at(WED, 9))
    c.take_dirty()
    c.on_positions([row(-100)], True, at(WED, 10))
    assert c.take_dirty(soft=False) == {} and c.soft == {"day:2026-03-04"}
    assert json.loads(c.take_dirty()["day:2026-03-04"])["pnl"] == -100 and c.soft == set()
    c.on_positions([row(-100)], True, at(WED, 10, 1))
    assert c.take_dirty() == {}  # nothing changed, nothing to write
    for pnl, material in ((300, False), (600, True), (-350, False), (-500, True)):  # floor up; breach
        c.on_positions([row(pnl)], True, at(WED, 11))
        assert bool(c.take_dirty(soft=False)) is material, pnl
    c.on_positions([row(-600)], True, at(WED, 12))
    c.roll(at(THU, 9))  # a new day saves the closing PnL of the old one at once
    assert json.loads(c.take_dirty(soft=False)["day:2026-03-04"])["pnl"] == -600


def test_the_first_stage_persisted_kill_switch_still_loads():
    back = RiskCore.load(Limits(), {"trading_state": json.dumps({"state": "HALTED", "reason": "KILL_SWITCH"})})
    assert back.effective(at(WED)) == (R.HALTED, R.KILL_SWITCH)


def test_no_flatten_job_survives_its_trading_day():
    """EXIT intents created on an earlier trading day are never sent: a new day drops every job, loudly."""
    c = core()
    c.roll(at(WED, 15, 15))
    c.add_job(FlattenJob(exchange="NFO", products=("MIS",), reason="SQUARE_OFF", started_at=R._iso(at(WED, 15, 15))))
    c.add_job(FlattenJob(reason="MANUAL", started_at=R._iso(at(WED, 15, 16))))
    c.roll(at(WED, 15, 30))
    kept = [j.reason for j in c.jobs]
    assert "MANUAL" in kept  # same day: kept
    events = c.roll(at(THU, 9))
    assert c.jobs == [] and "FLATTEN_EXPIRED" in [e.kind for e in events]


def test_limits_from_config():
    cfg = config_from_dict({"broker": {"mode": "shoonya"}, "risk": {"max_daily_loss": 5000, "trail_step": 1000,
                                                                       "square_off_time": {"NFO": "15:10"}}})
    lim = Limits.from_config(cfg)
    assert lim.max_daily_loss == 5000 and lim.enforce_trading_hours is True
    assert lim.square_off_time("NFO") == R.parse_hhmm("15:10") and lim.square_off_time("MCX") is None
    assert Limits.from_config(config_from_dict({})).enforce_trading_hours is False


# ---- the flatten planner ----------------------------------------------------------------------------

def book(*rows_):
    return [row(netqty=n, exch=e, tsym=s, prd=p) for e, s, p, n in rows_]


def ledger(*entries):
    return [{"strategy_name": st, "exchange": e, "symbol": s, "product": p, "net_qty": n} for st, e, s, p, n in entries]


def open_order(cid, strategy="S1", symbol="A", status="SENT_TO_BROKER", broker_id="b1", source="webhook",
               execution="ENTRY", product="NRML", exchange="NFO"):
    return {"command_id": cid, "source": source, "strategy_name": strategy, "execution_type": execution,
            "exchange": exchange, "symbol": symbol, "product": product, "status": status, "broker_order_id": broker_id}


def test_flatten_exits_each_strategy_share_in_its_own_product():
    plan = plan_flatten(book(("NFO", "A", "M", 130), ("NFO", "B", "I", -30), ("NSE", "X-EQ", "C", 10)), [],
                        ledger(("S1", "NFO", "A", "NRML", 65), ("S2", "NFO", "A", "NRML", 65),
                               ("S3", "NFO", "B", "MIS", -30), ("S4", "NSE", "X-EQ", "CNC", 10)))
    assert [(e.strategy_name, e.symbol, e.product, e.side, e.quantity) for e in plan.exits] == [
        ("S1", "A", "NRML", "SELL", 65), ("S2", "A", "NRML", "SELL", 65), ("S3", "B", "MIS", "BUY", 30)]
    assert plan.cancels == () and plan.waiting == () and plan.leftovers == ()


def test_flatten_cancels_open_orders_first_and_waits_for_them():
    orders = [open_order("e1", symbol="A"), open_order("x1", symbol="A", execution="EXIT", broker_id="b2"),
              open_order("e2", symbol="C", status="CREATED", broker_id=None),
              open_order("u1", symbol="D", broker_id=None),  # outcome unknown: nothing to cancel yet
              open_order("c1", symbol="E", product="CNC", broker_id="b9")]
    plan = plan_flatten(book(("NFO", "A", "M", 65), ("NFO", "B", "M", 65)), orders,
                        ledger(("S1", "NFO", "A", "NRML", 65), ("S1", "NFO", "B", "NRML", 65)))
    assert [c.command_id for c in plan.cancels] == ["e1", "x1"]  # a resting exit would reverse the position
    assert [(e.symbol, e.quantity) for e in plan.exits] == [("B", 65)]
    assert plan.waiting == ("NFO:A", "NFO:C", "NFO:D") and not plan.idle


def test_flatten_waits_for_its_own_exits_and_never_cancels_them():
    orders = [open_order("r1", source="risk", execution="EXIT", symbol="A")]
    plan = plan_flatten(book(("NFO", "A", "M", 65)), orders, ledger(("S1", "NFO", "A", "NRML", 65)))
    assert plan.exits == () and plan.cancels == () and plan.waiting == ("NFO:A",) and plan.leftovers == ()


def test_flatten_reports_positions_no_strategy_holds():
    plan = plan_flatten(book(("NFO", "A", "M", 100), ("NFO", "Z", "M", -5)), [],
                        ledger(("S1", "NFO", "A", "NRML", 65), ("S2", "NFO", "A", "NRML", -10)))
    assert [(e.strategy_name, e.quantity) for e in plan.exits] == [("S1", 65)]
    assert [(p.symbol, p.netqty) for p in plan.leftovers] == [("A", 35), ("Z", -5)]
    assert plan.idle is False
    assert plan_flatten(book(("NFO", "Z", "M", -5)), [], []).idle is True  # leftovers alone: nothing to do


def test_flatten_never_exits_more_than_the_broker_shows():
    plan = plan_flatten(book(("NFO", "A", "M", 30)), [], ledger(("S1", "NFO", "A", "NRML", 65)))
    assert [(e.side, e.quantity) for e in plan.exits] == [("SELL", 30)]
    assert plan_flatten(book(("NFO", "A", "M", 0)), [], ledger(("S1", "NFO", "A", "NRML", 65))).idle


def test_flatten_scopes():
    rows = book(("NFO", "A", "M", 65), ("NFO", "B", "I", 65), ("MCX", "C", "I", 1))
    owned = ledger(("S1", "NFO", "A", "NRML", 65), ("S2", "NFO", "B", "MIS", 65), ("S1", "MCX", "C", "MIS", 1))
    orders = [open_order("o2", strategy="S2", symbol="Q"), open_order("o1", strategy="S1", symbol="R")]
    by_strategy = plan_flatten(rows, orders, owned, strategy="S1")
    assert sorted(e.symbol for e in by_strategy.exits) == ["A", "C"]
    assert [c.command_id for c in by_strategy.cancels] == ["o1"] and by_strategy.leftovers == ()
    by_exchange = plan_flatten(rows, orders, owned, exchange="MCX")
    assert [e.symbol for e in by_exchange.exits] == ["C"] and by_exchange.cancels == ()
    mis_only = plan_flatten(rows, [], owned, products=("MIS",))
    assert sorted(e.symbol for e in mis_only.exits) == ["B", "C"]


def test_flatten_of_a_flat_book_is_idle():
    assert plan_flatten([], [], []).idle
    assert plan_flatten(book(("NFO", "A", "M", 0)), [open_order("d", status="EXECUTED")], []).idle


def test_flatten_jobs_cover_narrower_ones():
    c = core()
    assert c.add_job(FlattenJob(exchange="NFO", products=("MIS",), reason="SQUARE_OFF"))
    assert c.add_job(FlattenJob(strategy="S1"))
    assert not c.add_job(FlattenJob(strategy="S1", exchange="NFO"))
    assert c.add_job(FlattenJob(reason="DAILY_LOSS_HIT"))  # the whole account replaces both
    assert [(j.reason, j.exchange, j.strategy) for j in c.jobs] == [("DAILY_LOSS_HIT", None, None)]
    c.end_job(c.jobs[0])
    assert c.jobs == []
