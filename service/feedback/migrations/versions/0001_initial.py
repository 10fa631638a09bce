"""Initial schema: issued cards, feedback and the JWT replay cache.

Revision ID: 0001
Revises:
Create Date: 2025-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Migrations spell out their types instead of importing service.feedback.tables: a migration must
# keep creating the schema of its own revision after the table definitions have moved on.
_KEY = sa.String(255)
_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "issued_cards",
        sa.Column("uuid", _KEY, nullable=False),
        sa.Column("service_id", _KEY, nullable=False),
        sa.Column("topic_system", sa.Text(), nullable=False),
        sa.Column("topic_code", _KEY, nullable=False),
        sa.Column("hook_instance", _KEY, nullable=False),
        sa.Column("issued_at", _TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("uuid", name="pk_issued_cards"),
    )
    op.create_index("ix_issued_cards_topic_code", "issued_cards", ["topic_code"])
    op.create_index(
        "ix_issued_cards_service_id_topic_code", "issued_cards", ["service_id", "topic_code"]
    )

    op.create_table(
        "feedback",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("service_id", _KEY, nullable=False),
        sa.Column("card_uuid", _KEY, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("outcome_timestamp", _TIMESTAMP, nullable=False),
        sa.Column("accepted_suggestions", sa.JSON(), nullable=False),
        sa.Column("override_reason_system", sa.Text(), nullable=True),
        sa.Column("override_reason_code", sa.Text(), nullable=True),
        sa.Column("override_reason_display", sa.Text(), nullable=True),
        sa.Column("user_comment", sa.Text(), nullable=True),
        sa.Column("received_at", _TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_feedback"),
        sa.CheckConstraint("outcome IN ('accepted', 'overridden')", name="ck_feedback_outcome"),
        sa.UniqueConstraint(
            "card_uuid",
            "outcome",
            "outcome_timestamp",
            name="uq_feedback_card_uuid_outcome_outcome_timestamp",
        ),
    )
    op.create_index("ix_feedback_service_id", "feedback", ["service_id"])

    op.create_table(
        "jwt_replay",
        sa.Column("issuer", _KEY, nullable=False),
        sa.Column("jti", _KEY, nullable=False),
        sa.Column("expires_at", _TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("issuer", "jti", name="pk_jwt_replay"),
    )
    op.create_index("ix_jwt_replay_expires_at", "jwt_replay", ["expires_at"])


def downgrade() -> None:
    op.drop_table("jwt_replay")
    op.drop_table("feedback")
    op.drop_table("issued_cards")
