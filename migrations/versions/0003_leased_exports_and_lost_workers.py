"""leased exports and lost workers

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db.base

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("export", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attempt", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(
            sa.Column("lost_workers", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("lease_owner", sa.String(length=255), nullable=True))
        batch_op.add_column(
            sa.Column("lease_expires_at", app.db.base.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("enqueued_at", app.db.base.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("started_at", app.db.base.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.create_index("ix_export_status", ["status"], unique=False)

    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("lost_workers", sa.Integer(), server_default="0", nullable=False)
        )

    # An export left running before exports had leases was, most likely, lost with its worker:
    # an expired lease hands it to the reaper, which queues it for another worker.
    export = sa.table(
        "export",
        sa.column("status", sa.String()),
        sa.column("lease_expires_at", app.db.base.UTCDateTime(timezone=True)),
    )
    op.execute(
        export.update()
        .where(export.c.status == "running", export.c.lease_expires_at.is_(None))
        .values(lease_expires_at=app.db.base.utcnow())
    )


def downgrade() -> None:
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_column("lost_workers")

    with op.batch_alter_table("export", schema=None) as batch_op:
        batch_op.drop_index("ix_export_status")
        batch_op.drop_column("started_at")
        batch_op.drop_column("enqueued_at")
        batch_op.drop_column("lease_expires_at")
        batch_op.drop_column("lease_owner")
        batch_op.drop_column("lost_workers")
        batch_op.drop_column("attempt")
