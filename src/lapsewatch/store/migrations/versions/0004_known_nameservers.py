"""domains.nameservers, emails.added_at

* ``domains.nameservers``: the registry's name servers while the domain was healthy.
* ``emails.added_at``: when the address was added (NULL for older rows and for
  imports, which give ``verified_at`` instead).

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

import lapsewatch.store.models

_DT = lapsewatch.store.models.UTCDateTime(timezone=True)

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("domains") as batch:
        batch.add_column(sa.Column("nameservers", sa.JSON(), nullable=True))
    with op.batch_alter_table("emails") as batch:
        batch.add_column(sa.Column("added_at", _DT, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("emails") as batch:
        batch.drop_column("added_at")
    with op.batch_alter_table("domains") as batch:
        batch.drop_column("nameservers")
