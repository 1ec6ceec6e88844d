"""indexes for the retention task's pruning by age

Revision ID: ends
Revises: client
Create Date: 2026-11-28
"""
from alembic import op

revision = 'ends'
down_revision = 'client'
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Index the times that rows are pruned by, so each pruning batch reads few rows."""
    op.create_index('ix_events_created_at', 'events', ['created_at'], unique=False)
    op.create_index('ix_connect_sessions_expires_at', 'connect_sessions', ['expires_at'], unique=False)
    op.create_index('ix_connect_attempts_created_at', 'connect_attempts', ['created_at'], unique=False)
    op.create_index('ix_webhook_deliveries_created_at', 'webhook_deliveries', ['created_at'], unique=False)


def downgrade() -> None:
    """Drop them."""
    op.drop_index('ix_webhook_deliveries_created_at', table_name='webhook_deliveries')
    op.drop_index('ix_connect_attempts_created_at', table_name='connect_attempts')
    op.drop_index('ix_connect_sessions_expires_at', table_name='connect_sessions')
    op.drop_index('ix_events_created_at', table_name='events')
