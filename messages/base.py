"""The one base of every message and payload model: frozen, so a message cannot change after it is sent."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)
