"""Peewee models. The column names are a contract (shared/DESIGN.md): the read API and operators' scripts use them.

These classes describe the NEWEST schema (a fresh database is created from them). Any change to a table here
needs a migration in storage/migrations.py that brings an existing database to the same shape.

Only StoreActor writes `orders`, `order_events` and `alerts`; everyone may read.
"""

from __future__ import annotations

from datetime import datetime, timezone

from peewee import (
    AutoField,
    CharField,
    DatabaseProxy,
    FloatField,
    IntegerField,
    Model,
    TextField,
)

database_proxy = DatabaseProxy()


def utc_now() -> str:
    """UTC ISO-8601 with microseconds, e.g. 2026-11-21T09:20:00.123456+00:00 (sorts as text)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


class BaseModel(Model):
    class Meta:
        database = database_proxy


class Order(BaseModel):
    command_id = CharField(unique=True, max_length=40)
    alert_id = CharField(index=True, max_length=200)  # the sender's id (idempotency key), as given
    # The service's own key of the processed alert: ties its legs together (same-alert exemptions, spreads).
    # A reused alert_id with different content is a new alert with a new key.
    alert_key = CharField(index=True, max_length=40, default="")
    client_id = CharField(max_length=40)
    source = CharField(max_length=20)  # webhook | manual | risk
    strategy_name = CharField(index=True, max_length=100)
    execution_type = CharField(max_length=10)  # ENTRY | EXIT
    exchange = CharField(max_length=10)
    symbol = CharField(index=True, max_length=100)
    side = CharField(max_length=4)  # BUY | SELL
    quantity = IntegerField()
    product = CharField(max_length=10)  # NRML | MIS | CNC
    order_type = CharField(max_length=10)  # MARKET | LIMIT | SL | SL-M
    price = FloatField(default=0.0)
    trigger_price = FloatField(null=True)
    status = CharField(index=True, max_length=20)
    tag = CharField(null=True, max_length=300)
    broker_order_id = CharField(null=True, index=True, max_length=40)
    filled_qty = IntegerField(default=0)
    avg_price = FloatField(null=True)
    # The broker's own word on the order (OPEN, TRIGGER_PENDING, COMPLETE, ...; normalised), and when a broker
    # report last told us something new. NULL: the broker has not confirmed the order (yet).
    broker_status = CharField(null=True, max_length=30)
    broker_status_at = CharField(null=True, max_length=40)
    created_at = CharField(max_length=40)
    # Indexed: risk's open-positions count reads "filled since the last PositionBook" on every ENTRY alert,
    # which without it scans the whole day's orders.
    updated_at = CharField(index=True, max_length=40)
    leg_index = IntegerField(default=0)
    parent_command_id = CharField(null=True, max_length=40)

    class Meta:
        table_name = "orders"


class OrderEvent(BaseModel):
    id = AutoField()
    command_id = CharField(index=True, max_length=40)
    from_status = CharField(null=True, max_length=20)
    to_status = CharField(max_length=20)
    tag = CharField(null=True, max_length=300)
    detail = TextField(null=True)
    at = CharField(max_length=40)

    class Meta:
        table_name = "order_events"


class Alert(BaseModel):
    id = AutoField()
    alert_id = CharField(null=True, index=True, max_length=200)
    received_at = CharField(max_length=40)
    source = CharField(max_length=20)
    remote_addr = CharField(null=True, max_length=64)
    outcome = CharField(max_length=20)  # accepted | duplicate | invalid | unauthorized | too_large | ...
    http_status = IntegerField()
    strategy_name = CharField(null=True, max_length=100)
    body = TextField(null=True)  # secret redacted
    response = TextField(null=True)  # the JSON answer (replayed for a duplicate alert_id)
    error = TextField(null=True)
    alert_key = CharField(null=True, max_length=40)  # orders.alert_key of the legs this alert registered
    # sha256 of the alert's normalised content: the same alert_id is a retry only with the same fingerprint.
    fingerprint = CharField(null=True, max_length=64)

    class Meta:
        table_name = "alerts"


class RiskState(BaseModel):
    """Persisted risk state per client_id; value is JSON. Written by RiskActor only."""

    client_id = CharField(max_length=40)
    key = CharField(max_length=60)
    value = TextField()
    updated_at = CharField(max_length=40)

    class Meta:
        table_name = "risk_state"
        primary_key = False
        indexes = ((("client_id", "key"), True),)


class ExternalOrder(BaseModel):
    """A broker order whose remarks are not one of our command_ids: recorded, never adopted into a strategy."""

    broker_order_id = CharField(unique=True, max_length=40)
    remarks = CharField(null=True, max_length=200)
    exchange = CharField(null=True, max_length=10)
    symbol = CharField(null=True, max_length=100)
    side = CharField(null=True, max_length=4)
    quantity = IntegerField(null=True)
    status = CharField(max_length=30)
    filled_qty = IntegerField(default=0)
    first_seen_at = CharField(max_length=40)
    last_seen_at = CharField(max_length=40)

    class Meta:
        table_name = "external_orders"


class LedgerAdjustment(BaseModel):
    """A correction of a strategy's ledger (built from our fills) that the broker's truth forced: e.g. a
    position squared off outside the service, written off when an exit found the broker holding less."""

    id = AutoField()
    strategy_name = CharField(index=True, max_length=100)
    exchange = CharField(max_length=10)
    symbol = CharField(max_length=100)
    product = CharField(max_length=10)
    quantity = IntegerField()  # signed, added to the strategy's net quantity
    reason = CharField(max_length=300)
    command_id = CharField(null=True, max_length=40)  # the exit that found it
    at = CharField(max_length=40)

    class Meta:
        table_name = "ledger_adjustments"


class SeenSignature(BaseModel):
    """Webhook signatures already used (a digest, never the signature): a replayed signed request is refused,
    across restarts too. Rows older than the signature window are useless and pruned."""

    key = CharField(unique=True, max_length=64)
    at = CharField(index=True, max_length=40)

    class Meta:
        table_name = "seen_signatures"


ALL_MODELS = (Order, OrderEvent, Alert, RiskState, ExternalOrder, LedgerAdjustment, SeenSignature)
# The tables only StoreActor may write.
STORE_OWNED_MODELS = (Order, OrderEvent, Alert, ExternalOrder, LedgerAdjustment, SeenSignature)
