"""who reviewed a prediction

Revision ID: 0006_review_by
Revises: 0005_jobs
Create Date: 2026-11-29

* predictions.reviewed_by: the name of the person who confirmed or overruled a verdict on the
  Lots page. ``reviewed_verdict`` and ``reviewed_at`` said what and when, not who, and a
  review that nobody can be asked about is no audit trail. Nullable: old reviews stay
  unattributed rather than being given a made-up name.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_review_by"
down_revision: str | Sequence[str] | None = "0005_jobs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch_op:
        batch_op.add_column(sa.Column("reviewed_by", sa.String(100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("predictions") as batch_op:
        batch_op.drop_column("reviewed_by")
