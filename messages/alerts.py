"""The webhook contract of shared/DESIGN.md as pydantic models.

Shape errors (missing fields, unknown enum words, non-numbers) make the whole request a 400. A leg that
parses but is invalid (qty <= 0, LIMIT without a price, ...) is registered FAILED `VALIDATION_FAILED:*`
by the ingress; `leg_problems` in actors/ingress.py decides that.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from messages.base import Frozen

ORDER_TYPE_ALIASES = {
    "MARKET": "MARKET", "MKT": "MARKET",
    "LIMIT": "LIMIT", "LMT": "LIMIT",
    "SL": "SL", "SL-LMT": "SL", "SL-LIMIT": "SL", "SLL": "SL",
    "SL-M": "SL-M", "SLM": "SL-M", "SL-MKT": "SL-M", "SL-MARKET": "SL-M",
}
PRODUCT_ALIASES = {"NRML": "NRML", "M": "NRML", "MIS": "MIS", "I": "MIS", "CNC": "CNC", "C": "CNC"}
DIRECTION_ALIASES = {"BUY": "BUY", "B": "BUY", "SELL": "SELL", "S": "SELL"}
EXECUTION_ALIASES = {"ENTRY": "ENTRY", "EXIT": "EXIT"}


def lower_keys(value: Any) -> Any:
    """Match keys case-insensitively by lower-casing them (recursively through lists and dicts)."""
    if isinstance(value, dict):
        return {str(k).strip().lower(): lower_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [lower_keys(v) for v in value]
    return value


def _upper_or_none(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) and value.strip() else None


def _alias(table: dict[str, str], what: str):
    def parse(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"{what} must be a string, one of {sorted(set(table.values()))}")
        key = value.strip().upper().replace("_", "-")
        if key not in table:
            raise ValueError(f"unknown {what} {value!r}; expected one of {sorted(set(table.values()))}")
        return table[key]

    return parse


_to_order_type = _alias(ORDER_TYPE_ALIASES, "order_type")
_to_product = _alias(PRODUCT_ALIASES, "product_type")
_to_direction = _alias(DIRECTION_ALIASES, "direction")
_to_execution = _alias(EXECUTION_ALIASES, "execution_type")


class _Frozen(Frozen):
    # The webhook's shape: unknown keys ignored, text stripped. NaN and infinities are not prices or
    # quantities (Python's json accepts them).
    model_config = ConfigDict(frozen=True, extra="ignore", str_strip_whitespace=True, allow_inf_nan=False)


class WebhookLeg(_Frozen):
    tradingsymbol: str = Field(min_length=1, max_length=100)
    direction: Literal["BUY", "SELL"]
    qty: float
    order_type: Literal["MARKET", "LIMIT", "SL", "SL-M"] = "MARKET"
    price: float | None = 0.0
    trigger_price: float | None = None
    product_type: Literal["NRML", "MIS", "CNC"] = "NRML"
    exchange: str | None = None

    @field_validator("direction", mode="before")
    @classmethod
    def _direction(cls, v: Any) -> str:
        return _to_direction(v)

    @field_validator("order_type", mode="before")
    @classmethod
    def _order_type(cls, v: Any) -> str:
        return _to_order_type(v)

    @field_validator("product_type", mode="before")
    @classmethod
    def _product(cls, v: Any) -> str:
        return _to_product(v)

    @field_validator("qty", "price", "trigger_price", mode="before")
    @classmethod
    def _no_booleans(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError("must be a number, not true/false")
        return v

    @field_validator("price", "trigger_price", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().lower() in ("", "none", "null"):
            return None
        return v

    @field_validator("price", mode="after")
    @classmethod
    def _price_default(cls, v: float | None) -> float:
        return 0.0 if v is None else v

    _exchange = field_validator("exchange", mode="before")(lambda v: _upper_or_none(v))


class WebhookAlert(_Frozen):
    secret_key: str | None = None
    alert_id: str | None = Field(None, max_length=200)
    strategy_name: str = Field(min_length=1, max_length=100)
    execution_type: Literal["ENTRY", "EXIT"]
    exchange: str | None = None
    legs: list[WebhookLeg] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _case_insensitive(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError("the alert must be a JSON object")
        return lower_keys(data)

    @field_validator("execution_type", mode="before")
    @classmethod
    def _execution(cls, v: Any) -> str:
        return _to_execution(v)

    @field_validator("alert_id", mode="before")
    @classmethod
    def _alert_id(cls, v: Any) -> Any:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return str(v)
        if isinstance(v, str) and not v.strip():
            return None
        return v

    _exchange = field_validator("exchange", mode="before")(lambda v: _upper_or_none(v))
