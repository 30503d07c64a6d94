"""the venue's trading rules per symbol (instruments), refreshed from ccxt's load_markets

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa
import eternal.store.models


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('instruments',
    sa.Column('symbol', sa.String(length=32), nullable=False),
    sa.Column('qty_step', sa.Float(), nullable=False),
    sa.Column('min_qty', sa.Float(), nullable=False),
    sa.Column('min_notional', sa.Float(), nullable=False),
    sa.Column('price_tick', sa.Float(), nullable=False),
    sa.Column('max_leverage', sa.Float(), nullable=True),
    sa.Column('source', sa.String(length=32), nullable=False),
    sa.Column('updated_at', eternal.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('symbol'))


def downgrade() -> None:
    op.drop_table('instruments')
