"""Kensa's persistence layer: SQLAlchemy models, engines/transactions, repositories, migrations.

- ``db.session``: ``database_url()``, ``make_engine()``/``get_engine()``, ``session_scope()``;
- ``db.migrate``: ``upgrade()`` (call on start; the schema only ever comes from Alembic);
- ``db.repositories``: every read and write, as functions taking a ``Session``;
- ``db.testing``: throwaway SQLite/PostgreSQL databases for tests.

No torch here, and nothing that needs a GPU or Streamlit.
"""
