"""The migrations, proven: up from empty, down to nothing, up again, and in step with the models."""
from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from shared import migrate
from shared.models import Base

pytestmark = pytest.mark.integration


def tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_from_empty_downgrade_to_base_and_upgrade_again(new_database: Callable[[], str]) -> None:
    url = new_database()
    config = migrate.alembic_config(url)

    migrate.upgrade(url)
    assert tables(url) == set(Base.metadata.tables)

    command.downgrade(config, "base")
    assert tables(url) == set()

    migrate.upgrade(url)
    assert tables(url) == set(Base.metadata.tables)


def test_autogenerate_against_the_models_finds_no_difference(new_database: Callable[[], str]) -> None:
    url = new_database()
    migrate.upgrade(url)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            differences = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert differences == []
