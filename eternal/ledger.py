"""Pure bookkeeping of sleeve books: fills, funding, transfers, staking. No I/O.

Spot: a buy pays qty x price; its fee comes out of the coins received when charged in the coin
bought (Bybit's rule, the paper exchange's too), else out of the cash; a sell receives qty x price
minus the fee (in USDT).

USDT-margined linear perpetuals (spec, issue 3): one-way positions, cross margin within the sleeve.
Opening or increasing moves the initial margin (notional / leverage) out of `cash` into the
position's `margin`; reducing releases margin pro rata and books the realised P&L; the fee is
always paid from cash. A fill that crosses zero closes the position and opens the remainder the
other way at the fill's leverage (Bybit's one-way mode does the same), so the books can mirror any
fill an exchange reports. Equity = cash + margins + unrealised + spot (SleeveBook.equity).

Nothing is rounded: the books carry the exact float amounts the fills imply.
"""
from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from eternal.models import (
    PERP_SYMBOLS,
    QUOTE,
    Fill,
    FundingPayment,
    Market,
    PerpPosition,
    Side,
    Sleeve,
    SleeveBook,
    base_of,
    utc,
)

MAINTENANCE_MARGIN = 0.005   # fraction of notional (Bybit's lowest tier for BTC/ETH linear perps)
_CLOSE_TOLERANCE = 1e-9     # a closing qty this close (relative) to the position closes it all


def apply_fill(book: SleeveBook, fill: Fill) -> float:
    """Book one fill. Returns the realised P&L of a perp fill (0.0 for an opening fill and for
    spot, whose gains stay in the holdings' value)."""
    if fill.market == Market.PERP:
        return _apply_perp_fill(book, fill)
    if fill.market != Market.SPOT:
        raise NotImplementedError(f"{fill.market} fills are not booked yet ({fill.client_order_id})")
    asset = base_of(fill.symbol)
    notional = fill.qty * fill.price
    # a fee in the coin bought (Bybit spot) leaves the holdings; one in USDT (or priced in it) the cash
    in_coin = fill.fee if fill.fee_asset == asset else 0.0
    fee_usdt = fill.fee if fill.fee_asset == QUOTE else (0.0 if in_coin else fill.fee * fill.price)
    if fill.side == Side.BUY:
        book.cash -= notional + fee_usdt
        book.holdings[asset] = book.holdings.get(asset, 0.0) + fill.qty - in_coin
    else:
        book.cash += notional - fee_usdt
        book.holdings[asset] = book.holdings.get(asset, 0.0) - fill.qty - in_coin
    return 0.0


def _apply_perp_fill(book: SleeveBook, fill: Fill) -> float:
    # validate first: bad input never half-applies
    if not (fill.qty > 0 and fill.price > 0 and fill.leverage > 0):
        raise ValueError(f"perp fill {fill.trade_id} ({fill.client_order_id}) needs a positive qty, price "
                         f"and leverage, got qty={fill.qty!r} price={fill.price!r} leverage={fill.leverage!r}")
    fee = fill.fee if fill.fee_asset == QUOTE else fill.fee * fill.price
    sign = 1.0 if fill.side == Side.BUY else -1.0
    pos = book.perps.get(fill.symbol)
    realised, opening = 0.0, fill.qty
    if pos is not None and (pos.qty > 0) != (sign > 0):          # reduce, close or flip
        size = abs(pos.qty)
        # a venue's qty (a decimal) against our position (a sum of floats) may differ in the last
        # bits: within the tolerance it is the whole position, leaving no 1e-18 residue or flip
        whole = abs(fill.qty - size) <= _CLOSE_TOLERANCE * size
        closed = size if whole else min(fill.qty, size)
        realised = (fill.price - pos.entry_price) * closed * (1.0 if pos.qty > 0 else -1.0)
        if closed == size:
            released = pos.margin                               # all of it: no residue
            del book.perps[fill.symbol]
            pos = None
        else:
            released = pos.margin * (closed / size)             # <= margin: never negative
            pos.qty += sign * closed
            pos.margin -= released
        book.cash += released + realised
        opening = 0.0 if whole else fill.qty - closed
    if opening > 0:                                             # open, increase or the flip's rest
        margin = opening * fill.price / fill.leverage
        if pos is None:
            book.perps[fill.symbol] = PerpPosition(fill.symbol, sign * opening, fill.price, margin,
                                                   fill.leverage, fill.ts)
        else:
            size = abs(pos.qty)
            pos.entry_price = (size * pos.entry_price + opening * fill.price) / (size + opening)
            pos.qty += sign * opening
            pos.margin += margin
            pos.leverage = fill.leverage
        book.cash -= margin
    book.cash -= fee
    return realised


def settle_funding(book: SleeveBook, symbol: str, rate: float, price: float, ts: datetime,
                   amount: float | None = None) -> FundingPayment | None:
    """One funding settlement of the sleeve's `symbol` position, booked in cash: a long pays
    rate x qty x price, a short receives it (a negative rate reverses both). `expected` is that
    figure signed like `amount` (> 0 received); `amount` is what gets booked: the exchange's own
    figure when given, else the expected one. None when the sleeve holds no such position."""
    pos = book.perps.get(symbol)
    if pos is None:
        return None
    expected = -rate * pos.qty * price
    booked = expected if amount is None else amount
    book.cash += booked
    return FundingPayment(utc(ts), book.sleeve, symbol, pos.qty, price, rate, booked, expected)


def split_funding(books: Mapping[Sleeve, SleeveBook], sleeves: tuple[Sleeve, ...],
                  payment: FundingPayment) -> list[FundingPayment]:
    """One settlement of an account's net position (`payment`: its symbol, rate and price) as
    each of the account's virtual `sleeves` holding that perp earned it: -rate x the sleeve's
    signed qty x price. Linear in qty, so the parts sum to the venue's figure whenever the sleeves'
    positions sum to the account's; when they do not, the account's reconciliation says so (the
    difference is not spread over the sleeves)."""
    out = []
    for sleeve in sleeves:
        pos = books[sleeve].perps.get(payment.symbol) if sleeve in books else None
        if pos is not None and pos.qty:
            amount = -payment.rate * pos.qty * payment.price
            out.append(FundingPayment(payment.ts, sleeve, payment.symbol, pos.qty, payment.price, payment.rate,
                                      amount, amount))
    return out


def apply_funding(book: SleeveBook, payment: FundingPayment) -> None:
    """Repeat a settlement the exchange made on our own books (same amount, to the ulp)."""
    book.cash += payment.amount


def liquidation(book: SleeveBook, symbol: str, marks: Mapping[str, float],
                maintenance: float = MAINTENANCE_MARGIN,
                prices: Mapping[str, float] | None = None) -> tuple[float, bool] | None:
    """(price, falling) at which the sleeve's equity meets maintenance x the position's notional,
    or None when no positive mark gets there. `falling`: liquidated when the mark drops to the
    price (a long), else when it rises to it (a short). See `liquidation_price`."""
    pos = book.perps.get(symbol)
    if pos is None:
        return None
    base = base_of(symbol)
    # everything that does not move with this symbol's mark, at its current price
    fixed = book.cash
    for sym, other in book.perps.items():
        fixed += other.margin
        if sym != symbol:
            fixed += other.unrealised(_perp_mark(sym, marks, prices))
    for asset in set(book.holdings) | set(book.staked):
        if asset != base and book.qty(asset):
            fixed += book.qty(asset) * _spot_price(asset, marks, prices)
    spot = book.qty(base)              # spot of the same base is assumed to move with the mark
    # equity(p) - maintenance x notional(p) = a + b p; liquidated where it is <= 0
    a = fixed - pos.qty * pos.entry_price
    b = pos.qty + spot - maintenance * abs(pos.qty)
    if b > 0:                          # a long (or a short over-hedged by spot): falling marks hurt
        p = -a / b
        return (p, True) if p > 0 else None
    if b < 0:                          # a short: rising marks hurt, without bound
        return (max(-a / b, 0.0), False)
    return None if a > 0 else (0.0, False)


def liquidation_price(book: SleeveBook, symbol: str, marks: Mapping[str, float],
                      maintenance: float = MAINTENANCE_MARGIN,
                      prices: Mapping[str, float] | None = None) -> float | None:
    """The mark of `symbol` at which the sleeve's equity (cross margin; everything else at its
    current mark) falls to maintenance x the position's notional. With q the signed qty, e the
    entry, O the sleeve's equity without this position's unrealised P&L and h the spot qty of
    the same base (valued at the mark, basis ignored):

        long:  p = (q e - O) / (q (1 - mm) + h)      None when <= 0 (e.g. 1x, nothing else lost)
        short: p = (O + |q| e) / (|q| (1 + mm) - h)  None when |q| (1 + mm) <= h: a short hedged
               by at least as much spot cannot be liquidated by a rising price

    0.0 means the equity is below maintenance at any mark. `marks`: perp symbol -> mark of the
    other positions; `prices`: asset -> spot price of other spot holdings (default: their perp
    mark)."""
    found = liquidation(book, symbol, marks, maintenance, prices)
    return None if found is None else found[0]


def _perp_mark(symbol: str, marks: Mapping[str, float], prices: Mapping[str, float] | None) -> float:
    if symbol in marks:
        return marks[symbol]
    if prices and base_of(symbol) in prices:
        return prices[base_of(symbol)]
    raise ValueError(f"no mark for {symbol}: pass it in marks (perp symbol -> price)")


def _spot_price(asset: str, marks: Mapping[str, float], prices: Mapping[str, float] | None) -> float:
    if prices and asset in prices:
        return prices[asset]
    if asset in PERP_SYMBOLS and PERP_SYMBOLS[asset] in marks:
        return marks[PERP_SYMBOLS[asset]]
    raise ValueError(f"no price for the sleeve's {asset}: pass it in prices (asset -> price)")


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


def apply_transfer(books, transfer) -> None:
    """Move `transfer.qty` of `transfer.asset` between two sleeve books (USDT is cash)."""
    from eternal.models import QUOTE

    for sleeve, sign in ((transfer.from_sleeve, -1.0), (transfer.to_sleeve, 1.0)):
        if sleeve is None:
            continue
        book = books[sleeve]
        if transfer.asset == QUOTE:
            book.cash += sign * transfer.qty
        else:
            book.holdings[transfer.asset] = book.holdings.get(transfer.asset, 0.0) + sign * transfer.qty
