"""review audit time and the indexes the history views filter on

Revision ID: 0002_review_audit
Revises: 0001_initial
Create Date: 2026-11-25

* predictions.reviewed_at: when a person overrode the verdict (reviewed_verdict alone could
  not say when, so "corrections after bank v2" was unanswerable);
* ix_predictions_bank_version_id: "what did bank vN decide" and comparing bank versions;
* ix_images_project_id_label: the gallery filters and the per-label counts.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_review_audit"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch_op:
        batch_op.add_column(sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(op.f("ix_predictions_bank_version_id"), ["bank_version_id"])
    op.create_index(op.f("ix_images_project_id_label"), "images", ["project_id", "label"])


def downgrade() -> None:
    op.drop_index(op.f("ix_images_project_id_label"), table_name="images")
    with op.batch_alter_table("predictions") as batch_op:
        batch_op.drop_index(op.f("ix_predictions_bank_version_id"))
        batch_op.drop_column("reviewed_at")
