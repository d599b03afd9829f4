"""The risk state (`risk_state`): RiskActor's own key/value rows, read at its start and written as they change.
Not one of the StoreActor's tables: RiskActor is its only writer, through these two functions."""

from __future__ import annotations

from storage.models import RiskState, utc_now


def load(client_id: str) -> dict[str, str]:
    return {r.key: r.value for r in RiskState.select().where(RiskState.client_id == client_id)}


def save(client_id: str, values: dict[str, str]) -> None:
    """Upsert each key (one stamp for the batch)."""
    stamp = utc_now()
    for key, value in values.items():
        (RiskState.insert(client_id=client_id, key=key, value=value, updated_at=stamp)
         .on_conflict(conflict_target=[RiskState.client_id, RiskState.key],
                      update={RiskState.value: value, RiskState.updated_at: stamp})
         .execute())
