"""RiskActor: step 2A (ENTRY orders only; an EXIT always passes risk).

At this stage: a persisted kill switch and the daily max-loss check on PositionBook MTM. `RiskBook` is the
pure core; the actor persists its state, writes blocked legs through StoreActor and passes the rest on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from loguru import logger

from actors.base import SupervisedActor

from messages.commands import (
    GetState,
    Halt,
    Notify,
    OrdersRegistered,
    PositionsSnapshot,
    Resume,
    RiskCleared,
    TransitionOrder,
)
from messages.orders import OrderSnapshot
from storage.models import RiskState, utc_now

ACTIVE, REDUCING, HALTED = "ACTIVE", "REDUCING", "HALTED"


def positions_pnl(rows) -> float:
    """Day PnL = rpnl + urmtom over non-CNC positions (CNC is delivery, not the day's trading)."""
    total = 0.0
    for row in rows:
        if str(row.get("prd", "")).upper() in ("C", "CNC"):
            continue
        total += float(row.get("rpnl") or 0) + float(row.get("urmtom") or 0)
    return total


@dataclass
class RiskBook:
    max_daily_loss: float = 0.0
    state: str = ACTIVE
    reason: str | None = None
    pnl: float | None = None  # None until the first successful PositionBook read

    def check(self, order: OrderSnapshot) -> str | None:
        """The RISK_BLOCKED reason for this order, or None when it may proceed."""
        if order.execution_type != "ENTRY":
            return None
        if self.state == HALTED:
            return self.reason or "KILL_SWITCH"
        if self.state == REDUCING:
            return "REDUCING_ONLY"
        if self.loss_limit_hit():
            return "DAILY_LOSS_HIT"
        return None

    def loss_limit_hit(self) -> bool:
        return self.max_daily_loss > 0 and self.pnl is not None and self.pnl <= -self.max_daily_loss

    def on_positions(self, rows, ok: bool) -> bool:
        """Update PnL; a failed read never resets it. Returns True when this read breached the limit."""
        if not ok:
            return False
        self.pnl = positions_pnl(rows)
        if self.loss_limit_hit() and self.state != HALTED:
            self.state, self.reason = HALTED, "DAILY_LOSS_HIT"
            return True
        return False

    def view(self) -> dict:
        return {"state": self.state, "reason": self.reason, "pnl": self.pnl or 0.0,
                "pnl_known": self.pnl is not None, "max_loss": self.max_daily_loss}


class RiskActor(SupervisedActor):
    registry_name = "risk"

    def __init__(self, registry, config):
        super().__init__(registry)
        self.client_id = config.service.client_id
        self.book = RiskBook(max_daily_loss=config.risk.max_daily_loss)

    def on_start(self):
        row = RiskState.get_or_none((RiskState.client_id == self.client_id) & (RiskState.key == "trading_state"))
        if row is not None:
            saved = json.loads(row.value)
            self.book.state, self.book.reason = saved.get("state", ACTIVE), saved.get("reason")
            logger.info("risk state reloaded: {} ({})", self.book.state, self.book.reason)

    def _persist(self) -> None:
        value = json.dumps({"state": self.book.state, "reason": self.book.reason})
        (RiskState.insert(client_id=self.client_id, key="trading_state", value=value, updated_at=utc_now())
         .on_conflict(conflict_target=[RiskState.client_id, RiskState.key],
                      update={RiskState.value: value, RiskState.updated_at: utc_now()})
         .execute())

    def handle(self, message):
        if isinstance(message, OrdersRegistered):
            passed = []
            for order in message.orders:
                reason = self.book.check(order)
                if reason is None:
                    passed.append(order)
                    continue
                tag = f"RISK_BLOCKED:{reason}"
                self.registry.tell("store", TransitionOrder(command_id=order.command_id, to_status="FAILED",
                                                            expect_from=("CREATED",), tag=tag))
            if passed:
                self.registry.tell("guard", RiskCleared(orders=tuple(passed)))
            return None
        if isinstance(message, PositionsSnapshot):
            if self.book.on_positions(message.rows, message.ok):
                self._persist()
                logger.warning("daily max loss hit: pnl {:.2f} <= -{:.2f}; entries halted", self.book.pnl,
                               self.book.max_daily_loss)
                self.registry.tell("notifier", Notify(kind="risk", text=f"Daily max loss hit (PnL "
                                                      f"{self.book.pnl:.2f}); new entries halted"))
            return None
        if isinstance(message, Halt):
            self.book.state, self.book.reason = HALTED, "KILL_SWITCH" if message.reason == "MANUAL" else message.reason
            self._persist()
            self.registry.tell("notifier", Notify(kind="risk", text=f"Trading HALTED ({self.book.reason})"))
            return self.book.view()
        if isinstance(message, Resume):
            self.book.state, self.book.reason = ACTIVE, None
            self._persist()
            self.registry.tell("notifier", Notify(kind="risk", text="Trading resumed (ACTIVE)"))
            return self.book.view()
        if isinstance(message, GetState):
            return self.book.view()
        return None
