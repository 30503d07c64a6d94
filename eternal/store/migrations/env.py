"""Alembic environment: uses the engine handed over by eternal.store.db.ensure_schema."""
from alembic import context
from sqlalchemy import create_engine

from eternal.store.models import Base

target_metadata = Base.metadata
config = context.config
engine = config.attributes.get("connection_engine")
if engine is None:  # plain `alembic` command line: URL from the ini or the settings
    from eternal.config import load_settings

    engine = create_engine(config.get_main_option("sqlalchemy.url") or load_settings().database_url.get_secret_value())

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
