"""Repeat suppression: the patient key (a keyed hash, never the patient id) and the facts digest
of each issued card.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KEY = sa.String(255)


def upgrade() -> None:
    # Nullable columns without a default: adding them rewrites no rows on either backend.
    with op.batch_alter_table("issued_cards") as table:
        table.add_column(sa.Column("patient_key", _KEY, nullable=True))
        table.add_column(sa.Column("facts", _KEY, nullable=True))
    op.create_index(
        "ix_issued_cards_patient_key_service_id", "issued_cards", ["patient_key", "service_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_issued_cards_patient_key_service_id", table_name="issued_cards")
    with op.batch_alter_table("issued_cards") as table:
        table.drop_column("facts")
        table.drop_column("patient_key")
