"""Pure bookkeeping of sleeve books: fills, transfers, staking. No I/O.

A spot buy pays qty x price plus the fee in USDT; a sell receives qty x price minus the fee.
Nothing is rounded: the books carry the exact float amounts the fills imply.
"""
from __future__ import annotations

from eternal.models import QUOTE, Fill, Market, Side, SleeveBook, base_of


def apply_fill(book: SleeveBook, fill: Fill) -> None:
    if fill.market != Market.SPOT:
        raise NotImplementedError(f"{fill.market} fills are not booked yet ({fill.client_order_id})")
    asset = base_of(fill.symbol)
    notional = fill.qty * fill.price
    fee_usdt = fill.fee if fill.fee_asset == QUOTE else fill.fee * fill.price
    if fill.side == Side.BUY:
        book.cash -= notional + fee_usdt
        book.holdings[asset] = book.holdings.get(asset, 0.0) + fill.qty
    else:
        book.cash += notional - fee_usdt
        book.holdings[asset] = book.holdings.get(asset, 0.0) - fill.qty


def stake(book: SleeveBook, asset: str, qty: float) -> float:
    """Move `qty` (negative: unstake) between free holdings and staked; returns the qty moved."""
    if qty > 0:
        qty = min(qty, book.holdings.get(asset, 0.0))
    else:
        qty = -min(-qty, book.staked.get(asset, 0.0))
    if qty:
        book.holdings[asset] = book.holdings.get(asset, 0.0) - qty
        book.staked[asset] = book.staked.get(asset, 0.0) + qty
    return qty


def accrue_staking(book: SleeveBook, asset: str, apy: float, days: float = 1.0) -> float:
    """Staking reward for `days`: simple daily rate apy/365 on the staked qty, compounded daily."""
    staked = book.staked.get(asset, 0.0)
    if staked <= 0 or apy <= 0 or days <= 0:
        return 0.0
    reward = staked * ((1.0 + apy / 365.0) ** days - 1.0)
    book.staked[asset] = staked + reward
    return reward
