"""augmentation presets: one per name, and the one training uses

Revision ID: 0007_preset_training
Revises: 0006_review_by
Create Date: 2026-12-02

* augmentation_presets: unique (project_id, name). Saving a name used to add a row, so the
  Augmentation page showed the same name several times and "load preset X" was ambiguous;
  now saving overwrites. Existing duplicates are resolved first by keeping the newest row
  (highest id) of each name: that is the one the page listed first, i.e. what people saw.
* for_training (not null, default false) with a partial unique index: at most one preset
  per project is the augmentation training applies.
* updated_at: when the config was last overwritten (old rows: their created_at).
* ix_augmentation_presets_project_id is dropped: the unique (project_id, name) index
  starts with project_id and serves the same lookups.

Downgrade drops the new columns, index and constraint (which preset was for training is
lost) and restores the plain project index; the removed duplicates do not come back.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_preset_training"
down_revision: str | Sequence[str] | None = "0006_review_by"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "augmentation_presets"
ONE_FOR_TRAINING = "ux_augmentation_presets_one_for_training"


def upgrade() -> None:
    op.execute(
        f"DELETE FROM {TABLE} WHERE EXISTS (SELECT 1 FROM {TABLE} AS newer"
        f" WHERE newer.project_id = {TABLE}.project_id AND newer.name = {TABLE}.name"
        f" AND newer.id > {TABLE}.id)"
    )
    with op.batch_alter_table(TABLE) as batch_op:
        batch_op.add_column(
            sa.Column("for_training", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(
            sa.Column("updated_at", sa.DateTime(timezone=True),
                      server_default=sa.func.current_timestamp(), nullable=False)
        )
        batch_op.drop_index(op.f("ix_augmentation_presets_project_id"))
        batch_op.create_unique_constraint(
            op.f("uq_augmentation_presets_project_id_name"), ["project_id", "name"]
        )
    op.execute(f"UPDATE {TABLE} SET updated_at = created_at")
    # Outside the batch block: a SQLite table rebuild re-creates indexes from reflection,
    # which is not to be trusted with a partial index's WHERE clause.
    op.create_index(ONE_FOR_TRAINING, TABLE, ["project_id"], unique=True,
                    sqlite_where=sa.text("for_training"),
                    postgresql_where=sa.text("for_training"))


def downgrade() -> None:
    op.drop_index(ONE_FOR_TRAINING, table_name=TABLE)
    with op.batch_alter_table(TABLE) as batch_op:
        batch_op.drop_constraint(op.f("uq_augmentation_presets_project_id_name"), type_="unique")
        batch_op.create_index(op.f("ix_augmentation_presets_project_id"), ["project_id"])
        batch_op.drop_column("updated_at")
        batch_op.drop_column("for_training")
