"""the driver's clock and write-ahead plans; the paper exchange in rows

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa
import eternal.store.models


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('driver_state',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('doc', sa.JSON(), nullable=False),
    sa.Column('updated_at', eternal.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'))
    op.create_table('plans',
    sa.Column('key', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('created_at', eternal.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', eternal.store.models.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('key'))
    op.create_index('ix_plans_status', 'plans', ['status'])
    op.create_table('paper_orders',
    sa.Column('client_order_id', sa.String(length=64), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('client_order_id'))
    op.create_index('ix_paper_orders_status', 'paper_orders', ['status'])
    op.create_table('paper_journal',
    sa.Column('seq', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('seq'))
    op.create_table('paper_keys',
    sa.Column('key', sa.String(length=160), nullable=False),
    sa.Column('value', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('key'))


def downgrade() -> None:
    for t in ('paper_keys', 'paper_journal', 'paper_orders', 'plans', 'driver_state'):
        op.drop_table(t)
