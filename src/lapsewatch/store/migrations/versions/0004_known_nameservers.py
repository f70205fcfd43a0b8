"""domains.nameservers: the registry's name servers while the domain was healthy

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 20:05:00

A name sold at an expired-domain auction keeps its registration date; what
changes is who serves it. Kept from the last healthy check outside the
auto-renew grace, compared during the grace (see docs/verdicts.md).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("domains") as batch:
        batch.add_column(sa.Column("nameservers", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("domains") as batch:
        batch.drop_column("nameservers")
