"""The flatten job's pure parts: what a job plans from (never an entry registered after its start), how it is
stopped, how a job saved without its start is loaded, and what a job that gives up names."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from actors import risk_rules as R
from actors.operator_requests import risk_request
from messages.risk import StopFlatten
from runtime.config import ConfigError, config_from_dict

START = "2026-03-02T04:00:00.000000+00:00"
BEFORE = "2026-03-02T03:59:00.000000+00:00"
AFTER = "2026-03-02T04:01:00.000000+00:00"


def row(tsym: str, netqty: int, prd: str = "M", exch: str = "NFO") -> dict:
    return {"exch": exch, "tsym": tsym, "prd": prd, "netqty": str(netqty)}


def pos(strategy: str, symbol: str, qty: int, product: str = "NRML") -> dict:
    return {"strategy_name": strategy, "exchange": "NFO", "symbol": symbol, "product": product, "net_qty": qty}


def order(cid: str, strategy: str, symbol: str, created_at: str, execution_type: str = "ENTRY",
          source: str = "webhook", status: str = "SENT_TO_BROKER") -> dict:
    return {"command_id": cid, "source": source, "strategy_name": strategy, "execution_type": execution_type,
            "exchange": "NFO", "symbol": symbol, "product": "NRML", "status": status,
            "broker_order_id": f"b-{cid}", "created_at": created_at}


def test_an_entry_filled_after_the_start_is_not_exited():
    # S1 held 65 before the start and entered 65 more after it: only the first 65 is the job's.
    plan = R.plan_flatten([row("X", 130)], [], [pos("S1", "X", 130)], orders_before=START,
                          later_entries=[pos("S1", "X", 65)])
    assert [(e.strategy_name, e.side, e.quantity) for e in plan.exits] == [("S1", "SELL", 65)]
    assert plan.leftovers == ()
    # The job's exit filled, then the later entry: nothing left to exit, nothing to report.
    plan = R.plan_flatten([row("X", 65)], [], [pos("S1", "X", 65)], orders_before=START,
                          later_entries=[pos("S1", "X", 65)])
    assert (plan.exits, plan.leftovers, plan.waiting, plan.cancels) == ((), (), (), ())
    # Without the start, the same read squares the later entry off (the finding of issue 10).
    assert [e.quantity for e in R.plan_flatten([row("X", 65)], [], [pos("S1", "X", 65)]).exits] == [65]


def test_later_entries_never_take_a_position_across_zero():
    # A later entry and a later exit of it: the ledger nets to 0 and the broker is flat; nothing to do.
    plan = R.plan_flatten([row("X", 0)], [], [], orders_before=START, later_entries=[pos("S1", "X", 65)])
    assert plan.exits == () and plan.leftovers == ()
    # A stale PositionBook that has not seen the later fill yet: still no exit of the short side.
    plan = R.plan_flatten([row("X", 65)], [], [pos("S1", "X", 130)], orders_before=START,
                          later_entries=[pos("S1", "X", 130)])
    assert plan.exits == ()


def test_a_position_no_strategy_holds_is_a_leftover_beside_a_later_entry():
    plan = R.plan_flatten([row("X", 130)], [], [pos("S1", "X", 65)], orders_before=START,
                          later_entries=[pos("S1", "X", 65)])
    assert plan.exits == ()
    assert [(p.symbol, p.netqty) for p in plan.leftovers] == [("X", 65)]


def test_later_orders_are_not_cancelled_and_later_entries_not_waited_for():
    orders = [order("old", "S1", "X", BEFORE), order("new", "S2", "Y", AFTER),
              order("newexit", "S3", "Z", AFTER, execution_type="EXIT")]
    plan = R.plan_flatten([], orders, [], orders_before=START)
    assert [c.command_id for c in plan.cancels] == ["old"]
    assert plan.waiting == ("NFO:X", "NFO:Z")  # a later exit is waited for, never cancelled
    # A later resting entry of the same strategy and symbol defers that strategy's exit (the guard would cancel
    # the entry for it) without being cancelled itself.
    plan = R.plan_flatten([row("X", 65)], [order("new", "S1", "X", AFTER)], [pos("S1", "X", 65)],
                          orders_before=START)
    assert plan.exits == () and plan.cancels == () and plan.waiting == ("NFO:X",)


def test_what_a_job_that_gives_up_names():
    orders = [order("stuck", "S1", "X", BEFORE)]
    plan = R.plan_flatten([row("X", 65), row("EXT", -50)], orders, [pos("S1", "X", 65)], orders_before=START)
    items = R.describe_unfinished(plan)
    assert items[0] == "NFO:EXT NRML -50 held by no strategy"
    assert "order stuck (S1 NFO:X, broker id b-stuck) still open" in items[1]
    assert len(items) == 2  # NFO:X is named once, by its open order


def core_with(*reasons: str) -> R.RiskCore:
    return R.RiskCore(R.Limits(), jobs=[R.FlattenJob(exchange=f"E{i}", reason=r, started_at=START,
                                                     orders_before=START) for i, r in enumerate(reasons)])


def test_resume_ends_only_manual_jobs_and_stop_ends_all():
    core = core_with("MANUAL", "DAILY_LOSS_HIT", "SQUARE_OFF")
    assert [j.reason for j in core.stop_jobs(manual_only=True)] == ["MANUAL"]
    assert [j.reason for j in core.jobs] == ["DAILY_LOSS_HIT", "SQUARE_OFF"]
    assert "flatten" in core.take_dirty()
    assert len(core.stop_jobs()) == 2 and core.jobs == []
    assert json.loads(core.take_dirty()["flatten"]) == {"jobs": []}
    assert core.stop_jobs() == [] and core.take_dirty() == {}  # nothing running: nothing to save


def test_a_job_saved_without_its_start_counts_as_started_at_load():
    legacy = {"flatten": json.dumps({"jobs": [{"strategy": None, "exchange": "NFO", "products": ["NRML", "MIS"],
                                               "reason": "MANUAL", "rounds": 2, "idle_reads": 0}]})}
    now = datetime.now(UTC)
    core = R.RiskCore.load(R.Limits(), legacy)
    core.stamp_jobs(R._iso(now), "2026-03-02T04:00:00.000000+00:00")
    core.roll(now)
    assert [(j.started_at, j.orders_before, j.rounds) for j in core.jobs] == [
        (R._iso(now), "2026-03-02T04:00:00.000000+00:00", 2)]
    saved = json.loads(core.take_dirty()["flatten"])["jobs"][0]
    assert R.FlattenJob.from_dict(saved) == core.jobs[0]  # and it keeps them from then on


def test_flatten_stop_request_and_the_rounds_setting():
    assert risk_request("/risk/flatten/stop", {}) == StopFlatten()
    assert config_from_dict({}, environ={}).risk.flatten_max_rounds == 10
    assert config_from_dict({"risk": {"flatten_max_rounds": 3}}, environ={}).risk.flatten_max_rounds == 3
    with pytest.raises(ConfigError, match="flatten_max_rounds"):
        config_from_dict({"risk": {"flatten_max_rounds": 0}}, environ={})


def test_a_new_request_covered_by_a_running_job_re_arms_it_from_now():
    core = R.RiskCore(R.Limits(), jobs=[R.FlattenJob(reason="DAILY_LOSS_HIT", started_at=START,
                                                     orders_before=START, rounds=7, idle_reads=1)])
    assert core.add_job(R.FlattenJob(strategy="S1", started_at=AFTER, orders_before=AFTER)) is False
    running = core.jobs[0]
    assert (running.reason, running.orders_before, running.rounds, running.idle_reads) == (
        "DAILY_LOSS_HIT", AFTER, 0, 0)
    assert core.add_job(R.FlattenJob(strategy="S1", started_at=BEFORE, orders_before=BEFORE)) is False
    assert core.jobs[0].orders_before == AFTER  # never moved back
