"""heartbeat of a training run's worker

Revision ID: 0003_run_heartbeat
Revises: 0002_review_audit
Create Date: 2026-11-25

* model_versions.heartbeat_at: written with every progress update, so the Training page can
  tell a worker that died (SIGKILL, out of memory) from one that is merely slow; before this a
  dead worker's run stayed "running" for ever.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_run_heartbeat"
down_revision: str | Sequence[str] | None = "0002_review_audit"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch_op:
        batch_op.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch_op:
        batch_op.drop_column("heartbeat_at")
