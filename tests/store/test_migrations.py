"""Migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, text
from sqlmodel import SQLModel

from plugin.store import migrate
from plugin.store.db import make_engine
from plugin.store.models import FREE_CODE_PREDICATE


def test_upgrade_matches_the_models(database_url: str, postgres_engine: Engine | None) -> None:
    if postgres_engine is not None:
        with postgres_engine.begin() as conn:
            conn.execute(text("DROP SCHEMA IF EXISTS migrations_check CASCADE"))
            conn.execute(text("CREATE SCHEMA migrations_check"))
        engine = make_engine(database_url)
        engine.update_execution_options(schema_translate_map=None)
        url = engine.url.update_query_dict({"options": "-csearch_path=migrations_check"})
        engine = make_engine(url.render_as_string(hide_password=False))
    else:
        engine = make_engine(database_url)
    migrate.upgrade(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), SQLModel.metadata)
    assert diff == [], diff
    assert "alembic_version" in inspect(engine).get_table_names()
    assert _index_predicate(engine, "ix_code_unassigned") is not None  # compare_metadata ignores predicates
    migrate.upgrade(engine)  # a second run is a no-op
    engine.dispose()
    if postgres_engine is not None:
        with postgres_engine.begin() as conn:
            conn.execute(text("DROP SCHEMA migrations_check CASCADE"))


def _index_predicate(engine: Engine, name: str) -> str | None:
    """The migrated partial index's WHERE clause, checked against the model's terms."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            sql = conn.execute(text("SELECT sql FROM sqlite_master WHERE name = :n"), {"n": name}).scalar_one()
        else:
            sql = conn.execute(
                text("SELECT indexdef FROM pg_indexes WHERE indexname = :n AND schemaname = current_schema()"), {"n": name}
            ).scalar_one()
    where = sql.partition(" WHERE ")[2]
    for term in FREE_CODE_PREDICATE.split(" AND "):
        column, _, value = term.partition(" ")
        assert column in where and value.split()[-1] in where, (term, where)
    return where
