"""Tables for issued cards, feedback and the JWT replay cache.

The migrations in `migrations/versions/` create these tables in a database; the definitions here are
what the store queries with and what Alembic compares against (a test checks they do not drift).
Nothing here holds a patient identifier or card content. `issued_cards.patient_key` is a keyed
hash (HMAC-SHA256 with the operator's secret) of the EHR's patient id, kept only for services that
suppress repeated cards: without the secret it cannot be traced back to a patient.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

# Keyed and indexed text columns are bounded so that PostgreSQL can index them; the store refuses
# longer values itself, so SQLite (which ignores lengths) and PostgreSQL behave alike.
KEY_LENGTH = 255
OUTCOMES = ("accepted", "overridden")

# Stable constraint names let later migrations alter constraints without reflecting them first.
metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    SQLite has no time zone type: values are converted to UTC before they are written, so equal
    instants given in different offsets are stored identically (the feedback unique constraint
    depends on that), and they are marked as UTC again when read.
    """

    impl = sa.DateTime
    cache_ok = True

    def __init__(self) -> None:
        super().__init__(timezone=True)

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            # Guessing the zone of a naive value would silently shift feedback times.
            raise ValueError(f"timestamp {value.isoformat()} has no time zone")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


issued_cards = sa.Table(
    "issued_cards",
    metadata,
    sa.Column("uuid", sa.String(KEY_LENGTH), primary_key=True),
    sa.Column("service_id", sa.String(KEY_LENGTH), nullable=False),
    sa.Column("topic_system", sa.Text(), nullable=False),
    sa.Column("topic_code", sa.String(KEY_LENGTH), nullable=False),
    sa.Column("hook_instance", sa.String(KEY_LENGTH), nullable=False),
    sa.Column("issued_at", UTCDateTime(), nullable=False),
    # For repeat suppression (cdshooks/suppression.py), else null: the keyed hash of the patient,
    # and a digest of the record facts the card was computed from.
    sa.Column("patient_key", sa.String(KEY_LENGTH), nullable=True),
    sa.Column("facts", sa.String(KEY_LENGTH), nullable=True),
    # The summary groups by topic, either over all services or within one.
    sa.Index(None, "topic_code"),
    sa.Index(None, "service_id", "topic_code"),
    # Each patient-view of a suppressing service looks up the patient's earlier cards.
    sa.Index(None, "patient_key", "service_id"),
)

feedback = sa.Table(
    "feedback",
    metadata,
    # BIGINT on PostgreSQL for headroom; SQLite needs INTEGER for the column to alias the rowid.
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("service_id", sa.String(KEY_LENGTH), nullable=False),
    sa.Column("card_uuid", sa.String(KEY_LENGTH), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("outcome_timestamp", UTCDateTime(), nullable=False),
    sa.Column("accepted_suggestions", sa.JSON(), nullable=False),
    sa.Column("override_reason_system", sa.Text(), nullable=True),
    sa.Column("override_reason_code", sa.Text(), nullable=True),
    sa.Column("override_reason_display", sa.Text(), nullable=True),
    sa.Column("user_comment", sa.Text(), nullable=True),
    # When the service stored it, as opposed to when the clinician decided: for retention.
    sa.Column("received_at", UTCDateTime(), nullable=False),
    sa.CheckConstraint("outcome IN ('accepted', 'overridden')", name="outcome"),
    # The idempotency key: a client may re-send the same feedback any number of times. Its leading
    # column also serves the join from feedback to issued cards.
    sa.UniqueConstraint("card_uuid", "outcome", "outcome_timestamp"),
    sa.Index(None, "service_id"),
)

jwt_replay = sa.Table(
    "jwt_replay",
    metadata,
    sa.Column("issuer", sa.String(KEY_LENGTH), primary_key=True),
    sa.Column("jti", sa.String(KEY_LENGTH), primary_key=True),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    # Purging expired entries is a range delete on this column.
    sa.Index(None, "expires_at"),
)
