"""NorenOMS (Shoonya) wire models: every REST reply, WebSocket push and the PlaceOrder request.

Replies are parsed tolerantly: numbers arrive as strings (``"65"``, ``"245.50"``, ``""``, ``"None"``),
most fields may be absent, unknown fields are kept (``extra="allow"``). Order statuses are normalised to
the upper-case spelling of the current API (``CANCELLED``/``Canceled`` -> ``CANCELED``, ``REJECT`` ->
``REJECTED``, ``Open`` -> ``OPEN``). Session tokens are excluded from ``repr`` so that logging a model
never leaks them.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

from messages.base import Frozen


# ---------------------------------------------------------------------------------------------------
# Tolerant scalar parsing
# ---------------------------------------------------------------------------------------------------

_BLANKS = {"", "none", "null", "nan", "na", "-"}


def _blank_to_none(value: Any) -> Any:
    """None for absent-looking values ("", "None", "null", ...); other values unchanged."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in _BLANKS:
            return None
        return text.replace(",", "")
    return value


def _to_int(value: Any) -> Any:
    value = _blank_to_none(value)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            number = float(value)  # ValueError -> pydantic validation error
            if number.is_integer():
                return int(number)
            raise ValueError(f"not a whole number: {value!r}") from None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _to_int_or_zero(value: Any) -> Any:
    value = _to_int(value)
    return 0 if value is None else value


def _to_float(value: Any) -> Any:
    value = _blank_to_none(value)
    if isinstance(value, str):
        return float(value)  # ValueError -> pydantic validation error
    return value


def _to_float_or_zero(value: Any) -> Any:
    value = _to_float(value)
    return 0.0 if value is None else value


def _to_str(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


_STATUS_ALIASES = {
    "CANCELLED": "CANCELED",
    "CANCEL": "CANCELED",
    "REJECT": "REJECTED",
    "COMPLETED": "COMPLETE",
    "TRIGGERPENDING": "TRIGGER_PENDING",
}


def normalize_status(value: Any) -> Any:
    """Upper case, spaces/hyphens to underscores, and the known alternative spellings folded."""
    if value is None:
        return None
    if not isinstance(value, str):
        return value
    text = re.sub(r"[\s\-]+", "_", value.strip()).upper()
    if not text:
        return None
    return _STATUS_ALIASES.get(text, text)


Int = Annotated[int | None, BeforeValidator(_to_int)]
IntZero = Annotated[int, BeforeValidator(_to_int_or_zero)]
Float = Annotated[float | None, BeforeValidator(_to_float)]
FloatZero = Annotated[float, BeforeValidator(_to_float_or_zero)]
Str = Annotated[str | None, BeforeValidator(_to_str)]
Status = Annotated[str | None, BeforeValidator(normalize_status)]

TERMINAL_STATUSES = frozenset({"COMPLETE", "REJECTED", "CANCELED", "EXPIRED"})


class NorenModel(Frozen):
    """Base of every reply/push: frozen, tolerant, unknown fields kept."""

    model_config = ConfigDict(frozen=True, extra="allow")


class NorenReply(NorenModel):
    stat: Str = None
    emsg: Str = None
    request_time: Str = None

    @property
    def ok(self) -> bool:
        return (self.stat or "").strip().lower() == "ok"


# ---------------------------------------------------------------------------------------------------
# Session
# ---------------------------------------------------------------------------------------------------


class LoginReply(NorenReply):
    """QuickAuth reply; GenAcsTok (OAuth) adds access_token / refresh_token / expires_in."""

    uid: Str = None
    actid: Str = None
    uname: Str = None
    susertoken: Str = Field(None, repr=False)
    access_token: Str = Field(None, repr=False)
    refresh_token: Str = Field(None, repr=False)
    expires_in: Int = None
    token_type: Str = None
    exarr: list[Any] | None = None
    prarr: list[Any] | None = None
    brkname: Str = None
    email: Str = None
    lastaccesstime: Str = None


class UserDetailsReply(NorenReply):
    uid: Str = None
    actid: Str = None
    uname: Str = None
    email: Str = None
    m_num: Str = None
    brkname: Str = None
    brnchid: Str = None
    uprev: Str = None
    exarr: list[Any] | None = None
    prarr: list[Any] | None = None
    orarr: list[Any] | None = None


# ---------------------------------------------------------------------------------------------------
# Orders
# ---------------------------------------------------------------------------------------------------

Exchange = Literal["NSE", "NFO", "BSE", "BFO", "MCX", "CDS", "NCX", "BCD"]
Product = Literal["C", "M", "I", "B", "H"]
Side = Literal["B", "S"]
PriceType = Literal["LMT", "MKT", "SL-LMT", "SL-MKT"]
Retention = Literal["DAY", "EOS", "IOC"]


class PlaceOrderRequest(Frozen):
    """What we ask PlaceOrder for, in wire values (prd C/M/I, trantype B/S, prctyp LMT/MKT/SL-LMT/SL-MKT)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    exch: Exchange
    tsym: str = Field(min_length=1)
    qty: int = Field(gt=0)
    prc: float = Field(0.0, ge=0)
    trgprc: float | None = Field(None, gt=0)
    prd: Product
    trantype: Side
    prctyp: PriceType
    ret: Retention = "DAY"
    remarks: str = Field(max_length=128)
    amo: bool = False

    @model_validator(mode="after")
    def _prices_fit_type(self) -> PlaceOrderRequest:
        if self.prctyp in ("SL-LMT", "SL-MKT") and self.trgprc is None:
            raise ValueError(f"{self.prctyp} needs trgprc")
        if self.prctyp in ("LMT", "SL-LMT") and self.prc <= 0:
            raise ValueError(f"{self.prctyp} needs prc > 0")
        return self


class PlaceOrderReply(NorenReply):
    norenordno: Str = None


class OrderActionReply(NorenReply):
    """ModifyOrder / CancelOrder: ``result`` is the order number."""

    result: Str = None


class _OrderFields(NorenModel):
    """Fields shared by OrderBook rows, SingleOrdHist rows, TradeBook rows and WS `om` pushes."""

    stat: Str = None
    norenordno: Str = None
    uid: Str = None
    actid: Str = None
    exch: Str = None
    tsym: Str = None
    token: Str = None
    qty: Int = None
    prc: Float = None
    trgprc: Float = None
    prd: Str = Field(None, validation_alias=AliasChoices("prd", "pcode"))
    trantype: Str = None
    prctyp: Str = None
    ret: Str = None
    status: Status = None
    fillshares: IntZero = 0
    avgprc: Float = None
    rejreason: Str = None
    rejby: Str = None
    cancelqty: IntZero = 0
    remarks: Str = None
    exchordid: Str = None
    norentm: Str = None
    exch_tm: Str = None
    ordenttm: Str = None
    dscqty: Int = None
    ls: Int = None
    ti: Float = None
    pp: Int = None
    amo: Str = None

    @property
    def pending_qty(self) -> int:
        if self.qty is None:
            return 0
        return max(0, self.qty - self.fillshares - self.cancelqty)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class OrderBookEntry(_OrderFields):
    st_intrn: Str = None
    rpt: Str = None


class OrderBookRow(NorenModel):
    """An OrderBook row reduced to what reconciliation reads. The rest of the row is dropped as the reply is
    parsed, so a day's book of 100,000 orders costs tens of MB while it is read, not hundreds."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    stat: Str = None
    norenordno: Str = None
    remarks: Str = None
    status: Status = None
    fillshares: IntZero = 0
    avgprc: Float = None
    rejreason: Str = None
    exch: Str = None
    tsym: Str = None
    trantype: Str = None
    qty: Int = None


class OrderHistoryEntry(_OrderFields):
    """One state of an order from SingleOrdHist (newest first)."""

    st_intrn: Str = None
    rpt: Str = None


class TradeBookEntry(_OrderFields):
    """One fill."""

    flid: Str = None
    fltm: Str = None
    flqty: IntZero = 0
    flprc: Float = None


class PositionEntry(NorenModel):
    stat: Str = None
    uid: Str = None
    actid: Str = None
    exch: Str = None
    tsym: Str = None
    token: Str = None
    prd: Str = None
    netqty: IntZero = 0
    netavgprc: Float = None
    netupldprc: Float = None
    daybuyqty: IntZero = 0
    daysellqty: IntZero = 0
    daybuyavgprc: Float = None
    daysellavgprc: Float = None
    daybuyamt: Float = None
    daysellamt: Float = None
    cfbuyqty: IntZero = 0
    cfsellqty: IntZero = 0
    cfbuyavgprc: Float = None
    cfsellavgprc: Float = None
    upldprc: Float = None
    lp: Float = None
    rpnl: FloatZero = 0.0
    urmtom: FloatZero = 0.0
    ls: Int = None
    ti: Float = None
    mult: Float = None
    prcftr: Float = None
    pp: Int = None


class LimitsReply(NorenReply):
    actid: Str = None
    prfname: Str = None
    cash: FloatZero = 0.0
    payin: FloatZero = 0.0
    payout: FloatZero = 0.0
    brkcollamt: FloatZero = 0.0
    unclearedcash: FloatZero = 0.0
    daycash: FloatZero = 0.0
    collateral: FloatZero = 0.0
    marginused: FloatZero = 0.0
    peak_mar: FloatZero = 0.0
    span: FloatZero = 0.0
    expo: FloatZero = 0.0
    premium: FloatZero = 0.0
    rpnl: FloatZero = 0.0
    urmtom: FloatZero = 0.0

    @property
    def available(self) -> float:
        """Approximate free margin: cash + payin - marginused."""
        return self.cash + self.payin - self.marginused


class QuoteReply(NorenReply):
    exch: Str = None
    tsym: Str = None
    token: Str = None
    cname: Str = None
    symname: Str = None
    instname: Str = None
    exd: Str = None
    strprc: Float = None
    optt: Str = None
    lp: Float = None
    c: Float = None
    o: Float = None
    h: Float = None
    l: Float = None  # the wire name
    ap: Float = None
    v: Int = None
    oi: Int = None
    uc: Float = None
    lc: Float = None
    ti: Float = None
    ls: Int = None
    pp: Int = None
    mult: Float = None
    prcftr: Float = None
    bp1: Float = None
    sp1: Float = None
    bq1: Int = None
    sq1: Int = None
    frzqty: Int = None


class ScripEntry(NorenModel):
    exch: Str = None
    token: Str = None
    tsym: Str = None
    cname: Str = None
    symname: Str = None
    instname: Str = None
    dname: Str = None
    optt: Str = None
    weekly: Str = None
    pp: Int = None
    ls: Int = None
    ti: Float = None
    frzqty: Int = None


class SearchScripReply(NorenReply):
    values: list[ScripEntry] = []


# ---------------------------------------------------------------------------------------------------
# WebSocket pushes
# ---------------------------------------------------------------------------------------------------


class WsOrderUpdate(_OrderFields):
    """`om` push: an order report (reporttype NewAck, Fill, Rejected, Canceled, ...)."""

    t: Str = None
    reporttype: Str = None
    flqty: Int = None
    flprc: Float = None
    flid: Str = None
    fltm: Str = None


class WsTouchline(NorenModel):
    """`tk` snapshot or `tf` delta (a delta carries only the fields that changed)."""

    t: Str = None
    e: Str = None
    tk: Str = None
    ts: Str = None
    pp: Int = None
    ls: Int = None
    ti: Float = None
    lp: Float = None
    pc: Float = None
    v: Int = None
    o: Float = None
    h: Float = None
    l: Float = None  # the wire name
    c: Float = None
    ap: Float = None
    oi: Int = None
    poi: Int = None
    toi: Int = None
    bp1: Float = None
    sp1: Float = None
    bq1: Int = None
    sq1: Int = None
    ft: Str = None
    uc: Float = None  # not in the documented touchline (GetQuotes has them); kept when a server sends them
    lc: Float = None

    @property
    def key(self) -> str:
        """`EXCH|TOKEN`, the form used to subscribe."""
        return f"{self.e}|{self.tk}"


def touch_fields(message: dict[str, Any]) -> dict[str, float | int | None]:
    """lp / uc / lc / ti / ls of a `tk` / `tf` push, only those it carries (a `tf` carries what changed), parsed
    as tolerantly as the models ("", "None" -> None). Raises ValueError on a value that is not a finite number.

    The WebSocket thread runs this on every touchline tick, so it reads five fields instead of validating a model."""
    fields: dict[str, float | int | None] = {}
    for name in ("lp", "uc", "lc", "ti", "ls"):
        if name not in message:
            continue
        value = _to_int(message[name]) if name == "ls" else _to_float(message[name])
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value)):
            raise ValueError(f"touchline {name} is not a number: {message[name]!r}")
        fields[name] = value
    return fields
