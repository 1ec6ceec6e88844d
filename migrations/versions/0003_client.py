"""integrations.api_base_url: where the provider's own API lives

Revision ID: client
Revises: hooks
Create Date: 2026-11-28
"""
import sqlalchemy as sa
from alembic import op

revision = "client"
down_revision = "hooks"
branch_labels = None
depends_on = None

RESPONDIO_API_BASE_URL = "https://api.respond.io/v2"
SANDBOX_TOKEN_PATH = "/oauth/token"


def upgrade() -> None:
    """Add the column; respond.io integrations get its API, sandbox ones the sandbox API beside their token URL."""
    with op.batch_alter_table("integrations") as batch:
        batch.add_column(sa.Column("api_base_url", sa.Text(), nullable=True))
    integrations = sa.table("integrations", sa.column("id", sa.String), sa.column("provider", sa.String),
                            sa.column("token_url", sa.Text), sa.column("api_base_url", sa.Text))
    op.execute(integrations.update().where(integrations.c.provider == "respondio")
               .values(api_base_url=RESPONDIO_API_BASE_URL))
    connection = op.get_bind()
    rows = connection.execute(sa.select(integrations.c.id, integrations.c.token_url)
                              .where(integrations.c.provider == "sandbox")).all()
    for id_, token_url in rows:
        if token_url.endswith(SANDBOX_TOKEN_PATH):
            connection.execute(integrations.update().where(integrations.c.id == id_)
                               .values(api_base_url=token_url[: -len(SANDBOX_TOKEN_PATH)] + "/api/v2"))


def downgrade() -> None:
    """Drop the column."""
    with op.batch_alter_table("integrations") as batch:
        batch.drop_column("api_base_url")
