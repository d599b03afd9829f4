"""The earlier home of the actor messages, kept so that existing imports work: every name is re-exported from
the module of its concern (store, pipeline, broker, watcher, control, risk). Define nothing here."""

from __future__ import annotations

from messages.broker import (  # noqa: F401
    BrokerOrderReport,
    CancelOrder,
    GetFreezeTable,
    GetReader,
    GetSession,
    InstrumentInfo,
    InstrumentQuery,
    IsLoggedIn,
    IsWsConnected,
    Relogin,
    ReloginDue,
)
from messages.control import Accept, GetLedger, GetNotifierStats, GetPort, Notify, Refuse, Tick  # noqa: F401
from messages.pipeline import OrdersRegistered, RiskCleared, SendLegs  # noqa: F401
from messages.risk import GetState, Halt, Resume  # noqa: F401
from messages.store import (  # noqa: F401
    AmendExitLeg,
    AnnounceLegs,
    ClaimSignature,
    FlushBrokerStatuses,
    NoteOrder,
    RecordAlert,
    RegisterAlert,
    RegisterResult,
    ReportResult,
    SetBrokerOrderId,
    SplitLeg,
    SplitResult,
    Subscribe,
    Sync,
    TransitionOrder,
    TransitionResult,
    WriteOffPosition,
)
from messages.watcher import (  # noqa: F401
    BrokerOrderNotFound,
    GetWatcherStatus,
    LookUp,
    PollNow,
    PositionsSnapshot,
    WsStateChanged,
)
