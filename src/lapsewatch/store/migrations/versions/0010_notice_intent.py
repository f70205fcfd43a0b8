"""notices.email_id and notices.client: the account side's mail goes through the outbox

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 19:00:00

Links (verification, password reset) and security mails were sent by an in-memory
mailer and lost if the process died (issue #14). They are now notices: the row holds
the intent (the address a link is for, who asked) and the outbox makes the link's
token when it sends, so no usable token rests in the database.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("notices") as batch:
        batch.add_column(sa.Column("email_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("client", sa.String(100), nullable=True))
        batch.create_foreign_key(
            op.f("fk_notices_email_id_emails"), "emails", ["email_id"], ["id"], ondelete="CASCADE"
        )


def downgrade() -> None:
    with op.batch_alter_table("notices") as batch:
        batch.drop_constraint(op.f("fk_notices_email_id_emails"), type_="foreignkey")
        batch.drop_column("client")
        batch.drop_column("email_id")
