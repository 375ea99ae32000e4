"""Alembic environment: Keyhouse hands in an open connection (see ``db/migrate.py``)."""

from alembic import context

from keyhouse.db.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise SystemExit("run migrations with `keyhouse migrate` (it opens the connection)")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
