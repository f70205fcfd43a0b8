"""server_rates: each server's learned rate limit, so a cycle starts where the last ended

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 10:00:00

One row per server (``host:port``) the pacer has asked: the rate it learned and
the last rate the server refused (see lapsewatch.pace and docs/cycle.md).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from lapsewatch.store.models import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "server_rates",
        sa.Column("server", sa.String(300), nullable=False),
        sa.Column("source", sa.String(20), nullable=False),
        sa.Column("rate", sa.Float(), nullable=False),
        sa.Column("ceiling", sa.Float(), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("server", name=op.f("pk_server_rates")),
    )


def downgrade() -> None:
    op.drop_table("server_rates")
