"""The risk step, pure: every intent is approved, reduced or refused against policy and the
breakers before anything is stored or sent (spec layer 4; issue 12). No I/O, no clock.

`approve(intents, view)` walks the intents in plan order over a copy of the books (after the
plan's transfers, with every still-open order counted as if filled) and applies, per intent:

1. the kill switch: nothing leaves (except the L3/L4 breakers' own closing orders);
2. a sleeve halted by reconciliation or a broken invariant: nothing of that sleeve leaves;
3. the breakers (`eternal.breakers.size_factor`): a new entry of TREND, FUNDING or TACTICAL is
   cut or refused by level; CORE is never cut;
4. perp leverage at most `max_leverage` per sleeve (perp notional / sleeve equity);
5. per asset within a sleeve: TREND's perp notional at most 50 % of its equity, FUNDING's hedge at
   most 5 % (spot leg and perp leg each);
6. one asset's net exposure (spot + staked + signed perp notional, all sleeves) at most 45 % of the
   portfolio, for intents that raise it (not FUNDING's hedged spot leg: its pair is delta-neutral);
7. CORE keeps its 5 % cash buffer: no CORE buy takes its cash below it;
8. the sleeve's available balance: a buy's cost or a perp's margin (fees included) within its
   cash (plus what its sells in the same plan bring; a buy marked `scale_to_cash` is scaled by
   the venue at the fill price instead), a sell within its free holdings, a reduce-only order
   within its position.

A reduction or refusal is an event (`risk_reduced`, `risk_refused`) naming the rule with its
numbers. `held_limits(view, sleeves)` turns caps that a move or a transfer broke (by more than
`held_tolerance` of the cap) into reducing orders back to the cap; `breaker_orders(view)` are
L3's and L4's closing orders. Prices: spot by asset, perps at their mark, the decision's prices.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from eternal.breakers import RiskState, size_factor
from eternal.config import FeeParams, RiskParams
from eternal.instruments import tradable_qty
from eternal.valuation import book_equity
from eternal.models import (
    PERP_SYMBOLS,
    SPOT_SYMBOLS,
    Event,
    Market,
    OrderIntent,
    OrderRecord,
    OrderType,
    PerpPosition,
    Side,
    Sleeve,
    SleeveBook,
    base_of,
    minute_stamp,
)

BREAKER_REASONS = ("breaker_l3", "breaker_l4")
"""Reasons of the breakers' own closing orders: they leave even with the kill switch engaged."""
TREND = (Sleeve.TREND_1, Sleeve.TREND_2)
_EPS = 1e-12


@dataclass
class RiskView:
    """What the risk step looks at: the books after the plan's transfers, decision prices."""

    now: datetime
    books: Mapping[Sleeve, SleeveBook]
    prices: Mapping[str, float]          # asset -> spot price at the decision
    marks: Mapping[str, float]           # perp symbol -> mark at the decision
    state: RiskState
    params: RiskParams
    fees: FeeParams
    halted: Mapping[str, str] = field(default_factory=dict)   # sleeve value -> why
    open_orders: Iterable[OrderRecord] = ()                   # resting orders, counted as filled
    portfolio_wide: bool = True       # the whole portfolio (a partial backfill has no 45 % rule)


def perp_price(symbol: str, view: RiskView) -> float:
    return view.marks.get(symbol) or view.prices[base_of(symbol)]


def sleeve_equity(book: SleeveBook, view: RiskView) -> float:
    return book_equity(book, view.prices, view.marks)


def net_exposures(books: Mapping[Sleeve, SleeveBook], prices: Mapping[str, float],
                  marks: Mapping[str, float]) -> dict[str, float]:
    """Asset -> net USDT exposure across the sleeves: spot and staked at `prices` (asset ->
    price), perps signed at `marks` (perp symbol -> mark; default the asset's price)."""
    out: dict[str, float] = {}
    for b in books.values():
        for asset in set(b.holdings) | set(b.staked):
            if b.qty(asset) and asset in prices:
                out[asset] = out.get(asset, 0.0) + b.qty(asset) * prices[asset]
        for sym, pos in b.perps.items():
            base = base_of(sym)
            out[base] = out.get(base, 0.0) + pos.qty * (marks.get(sym) or prices[base])
    return out


def exposure(books: Mapping[Sleeve, SleeveBook], asset: str, view: RiskView) -> float:
    """Net USDT exposure to `asset` (`net_exposures`) at the view's prices."""
    return net_exposures(books, view.prices, view.marks).get(asset, 0.0)


# simulating an intent on a copy of the books -----------------------------------------------------
def _simulate(book: SleeveBook, intent: OrderIntent, qty: float, price: float, fees: FeeParams) -> None:
    if intent.market == Market.SPOT:         # fees as the venues charge them: a buy's in the coin bought
        asset = base_of(intent.symbol)
        if intent.side == Side.BUY:
            book.cash -= qty * price
            book.holdings[asset] = book.holdings.get(asset, 0.0) + qty * (1.0 - fees.spot_taker)
        else:
            book.cash += qty * price * (1.0 - fees.spot_taker)
            book.holdings[asset] = book.holdings.get(asset, 0.0) - qty
        return
    sign = 1.0 if intent.side == Side.BUY else -1.0
    pos = book.perps.get(intent.symbol)
    lev = intent.leverage or (pos.leverage if pos is not None else 1.0)
    book.cash -= qty * price * fees.perp_taker
    if pos is None:
        book.perps[intent.symbol] = PerpPosition(intent.symbol, sign * qty, price, qty * price / lev, lev,
                                                 datetime.min)
        return
    new = pos.qty + sign * qty
    if pos.qty * sign > 0:                                  # increase
        pos.margin += qty * price / lev
        pos.qty = new
    elif abs(new) < _EPS or pos.qty * new < 0:              # close (a flip's rest opens anew)
        book.cash += pos.margin + (price - pos.entry_price) * pos.qty
        del book.perps[intent.symbol]
        if abs(new) > _EPS:
            book.perps[intent.symbol] = PerpPosition(intent.symbol, new, price, abs(new) * price / lev, lev,
                                                     datetime.min)
    else:                                                   # reduce
        part = qty / abs(pos.qty)
        book.cash += pos.margin * part + (price - pos.entry_price) * (pos.qty - new)
        pos.margin *= 1 - part
        pos.qty = new


def _price(intent: OrderIntent, view: RiskView) -> float:
    if intent.market == Market.PERP:
        return perp_price(intent.symbol, view)
    return intent.limit_price if intent.limit_price else view.prices[base_of(intent.symbol)]


def opens(intent: OrderIntent, book: SleeveBook) -> bool:
    """True when the intent adds exposure for its sleeve (a spot buy, a perp order away from 0)."""
    if intent.market == Market.SPOT:
        return intent.side == Side.BUY
    if intent.reduce_only:
        return False
    pos = book.perps.get(intent.symbol)
    return pos is None or (pos.qty > 0) == (intent.side == Side.BUY)


def _raises_net(intent: OrderIntent, book: SleeveBook) -> bool:
    """True when the intent raises the portfolio's net long exposure to its asset (a spot buy, a
    perp buy that opens or adds to a long; covering a short lowers risk and is not capped)."""
    return intent.side == Side.BUY and (intent.market == Market.SPOT or opens(intent, book))


def _books_with_open_orders(view: RiskView, reducing_only: bool = False,
                            sleeves: Iterable[Sleeve] | None = None,
                            copied: set[Sleeve] | None = None) -> dict[Sleeve, SleeveBook]:
    """Copies of the books (of `sleeves`, default all) with the resting orders counted as filled
    (`reducing_only`: only those that reduce: the venue fills them first, so a trim must not count
    on an entry still resting). With `copied` (a set, filled here), only the books a resting order
    changes are copied, and named in it: the others are the view's own, to be copied by the caller
    before it changes one."""
    books = {s: b if copied is not None else b.copy() for s, b in view.books.items()
             if sleeves is None or s in sleeves}
    for rec in view.open_orders:
        i = rec.intent
        left = i.qty - (rec.filled_qty or 0.0)
        if reducing_only and i.sleeve in books and opens(i, books[i.sleeve]):
            continue
        if left > 0 and i.sleeve in books:
            if copied is not None and i.sleeve not in copied:
                books[i.sleeve] = books[i.sleeve].copy()
                copied.add(i.sleeve)
            try:
                _simulate(books[i.sleeve], i, left, _price(i, view), view.fees)
            except KeyError:                 # no price for it at this decision: leave it out
                pass
    return books


# the approval -------------------------------------------------------------------------------------
def approve(intents: list[OrderIntent], view: RiskView) -> tuple[list[OrderIntent], list[Event]]:
    """The intents that may be sent, each at most at its approved qty, and the events of every
    reduction and refusal (see the module's docstring for the rules, in their order)."""
    if not intents:          # most funding ticks: nothing to weigh
        return [], []
    p, st = view.params, view.state
    books = _books_with_open_orders(view)
    equity0 = {s: sleeve_equity(b, view) for s, b in books.items()}
    portfolio = sum(equity0.values())
    # what each sleeve's sells in this plan bring (spot sells fill before buys at the venue)
    proceeds: dict[Sleeve, float] = {}
    for i in intents:
        if i.market == Market.SPOT and i.side == Side.SELL and base_of(i.symbol) in view.prices:
            proceeds[i.sleeve] = proceeds.get(i.sleeve, 0.0) + i.qty * _price(i, view) * (1 - view.fees.spot_taker)
    out: list[OrderIntent] = []
    events: list[Event] = []
    fees_paid: dict[Sleeve, float] = {}

    def refuse(i: OrderIntent, rule: str, why: str, **numbers: float) -> None:
        events.append(Event(view.now, "risk_refused", f"{i.sleeve} {i.key}: {i.side} {i.qty:.8g} {i.symbol} refused "
                            f"by {rule}: {why}", i.sleeve, "warning",
                            {"rule": rule, "intent": i.key, "qty": i.qty, **numbers}))

    for intent in intents:
        i, sleeve = intent, intent.sleeve
        book = books.get(sleeve)
        if book is None:
            refuse(i, "unknown_sleeve", "the portfolio has no such sleeve")
            continue
        closing_breaker = i.reason in BREAKER_REASONS
        if st.kill_switch is not None and not closing_breaker:
            refuse(i, "kill_switch", f"kill switch engaged by {st.kill_switch.who}: {st.kill_switch.reason}")
            continue
        if sleeve.value in view.halted:
            refuse(i, "sleeve_halted", f"{sleeve} is halted ({view.halted[sleeve.value]})")
            continue
        try:
            price = _price(i, view)
        except KeyError:
            refuse(i, "no_price", f"no decision price for {i.symbol}")
            continue
        qty = i.qty
        limits: list[tuple[str, float, str, dict]] = []     # (rule, max qty, why, numbers)
        adds = opens(i, book)
        eq = sleeve_equity(book, view)

        if adds and i.reason != "rehedge" and not closing_breaker:
            factor = size_factor(st, sleeve.value, view.now, p)
            if factor < 1.0:
                limits.append((f"breaker_l{st.level}" if st.level else "breaker_restart", i.qty * factor,
                               f"breaker level L{st.level}: new sizes x{factor:g}" if factor > 0 else
                               f"breaker level L{st.level}: no new entries now",
                               {"factor": factor, "level": st.level, "drawdown": st.drawdown}))
        if i.market == Market.PERP and adds:
            lev = i.leverage or 1.0
            if lev > p.max_leverage + _EPS:
                i = replace(i, leverage=p.max_leverage)
                events.append(Event(view.now, "risk_reduced", f"{sleeve} {i.key}: leverage {lev:g}x cut to "
                                    f"{p.max_leverage:g}x (max_leverage)", sleeve, "warning",
                                    {"rule": "max_leverage", "intent": i.key, "leverage": lev}))
            gross = sum(abs(x.qty) * perp_price(s, view) for s, x in book.perps.items())
            room = p.max_leverage * eq - gross
            limits.append(("max_leverage", room / price, f"perp notional {gross:,.2f} of {p.max_leverage:g}x "
                           f"sleeve equity {eq:,.2f} USDT", {"gross_usdt": gross, "equity_usdt": eq}))
        asset = base_of(i.symbol)
        if adds and sleeve in TREND and i.market == Market.PERP:
            pos = book.perps.get(i.symbol)
            held = abs(pos.qty) * price if pos is not None else 0.0
            limits.append(("trend_max_asset_share", (p.trend_max_asset_share * eq - held) / price,
                           f"{asset} perp notional {held:,.2f} of {p.trend_max_asset_share:.0%} x sleeve equity "
                           f"{eq:,.2f} USDT", {"held_usdt": held, "equity_usdt": eq}))
        if adds and sleeve == Sleeve.FUNDING:
            pos = book.perps.get(PERP_SYMBOLS.get(asset, ""))
            held = (book.qty(asset) * price if i.market == Market.SPOT
                    else (abs(pos.qty) * price if pos is not None else 0.0))
            limits.append(("funding_max_asset_share", (p.funding_max_asset_share * eq - held) / price,
                           f"{asset} {i.market} leg {held:,.2f} of {p.funding_max_asset_share:.0%} x sleeve equity "
                           f"{eq:,.2f} USDT", {"held_usdt": held, "equity_usdt": eq}))
        # FUNDING's spot leg is hedged by its perp short: the pair adds no net exposure
        if view.portfolio_wide and _raises_net(i, book) and not closing_breaker and sleeve != Sleeve.FUNDING:
            net = exposure(books, asset, view)
            limits.append(("max_asset_share", (p.max_asset_share * portfolio - net) / price,
                           f"{asset} net exposure {net:,.2f} of {p.max_asset_share:.0%} x portfolio "
                           f"{portfolio:,.2f} USDT", {"exposure_usdt": net, "portfolio_usdt": portfolio}))
        if i.market == Market.SPOT and i.side == Side.BUY:
            fee = view.fees.spot_maker if i.post_only else view.fees.spot_taker
            cash = book.cash + proceeds.get(sleeve, 0.0)
            if sleeve == Sleeve.CORE:      # CORE sizes its buys to the buffer; their fees come out of it
                floor = p.core_cash_floor * eq
                limits.append(("core_cash_floor", (cash + fees_paid.get(sleeve, 0.0) - floor) / price,
                               f"CORE cash {cash:,.2f} with {floor:,.2f} USDT ({p.core_cash_floor:.0%}) kept",
                               {"cash_usdt": cash, "floor_usdt": floor}))
            if not i.scale_to_cash:    # the venue scales those to the cash at the fill price
                limits.append(("available_balance", cash / (price * (1 + fee)),
                               f"{sleeve} cash {cash:,.2f} USDT", {"cash_usdt": cash}))
        elif i.market == Market.SPOT:
            free = book.holdings.get(asset, 0.0)
            limits.append(("available_balance", free, f"{sleeve} holds {free:.8g} {asset} free", {"free": free}))
        elif adds:
            lev = i.leverage or 1.0
            cash = book.cash + proceeds.get(sleeve, 0.0)
            limits.append(("available_balance", cash / (price * (1 / lev + view.fees.perp_taker)),
                           f"{sleeve} cash {cash:,.2f} USDT for margin at {lev:g}x", {"cash_usdt": cash}))
        else:
            pos = book.perps.get(i.symbol)
            size = abs(pos.qty) if pos is not None else 0.0
            limits.append(("position", size, f"{sleeve} {i.symbol} position {size:.8g}", {"position": size}))

        binding = None
        for rule, cap, why, numbers in limits:
            cap = max(0.0, cap) if math.isfinite(cap) else 0.0
            if cap < qty * (1 - 1e-9):
                qty, binding = cap, (rule, why, numbers)
        if binding is not None and (qty <= 0 or qty < i.qty * 1e-6):
            rule, why, numbers = binding
            refuse(i, rule, why, **numbers)
            continue
        if binding is not None:
            rule, why, numbers = binding
            events.append(Event(view.now, "risk_reduced", f"{sleeve} {i.key}: {i.side} {i.symbol} {i.qty:.8g} -> "
                                f"{qty:.8g} by {rule}: {why}", sleeve, "info",
                                {"rule": rule, "intent": i.key, "qty": i.qty, "approved": qty, **numbers}))
            i = replace(i, qty=qty)
        _simulate(book, i, qty, price, view.fees)
        if i.market == Market.SPOT:
            fees_paid[sleeve] = fees_paid.get(sleeve, 0.0) + qty * price * view.fees.spot_taker
        if intent.market == Market.SPOT and intent.side == Side.SELL:   # its proceeds are in the book now
            proceeds[sleeve] = proceeds.get(sleeve, 0.0) - intent.qty * price * (1 - view.fees.spot_taker)
        out.append(i)
    return out, events


# caps that moves broke, and the breakers' closing orders -------------------------------------------
def held_limits(view: RiskView, sleeves: Iterable[Sleeve], *, portfolio_wide: bool) -> tuple[list[OrderIntent], list[Event]]:
    """Reducing orders for the held caps of `sleeves` that are exceeded by more than
    `held_tolerance` of the cap, each back to the cap: TREND's and FUNDING's per-asset caps, the
    per-sleeve leverage, and (`portfolio_wide`) one asset's 45 % of the portfolio, taken from
    TREND's longs first, then TACTICAL, then CORE. Resting reducing orders count as filled (a trim
    is not sent twice); resting entries do not (the venue fills reductions first)."""
    p = view.params
    sleeves = list(sleeves)
    # most calls trim nothing: a book is copied only when a resting order or a trim changes it
    copied: set[Sleeve] = set()
    books = _books_with_open_orders(view, reducing_only=True, sleeves=None if portfolio_wide else sleeves,
                                    copied=copied)
    over = 1.0 + p.held_tolerance
    intents: list[OrderIntent] = []
    events: list[Event] = []
    tag = minute_stamp(view.now)

    def trim(sleeve: Sleeve, symbol: str, market: Market, side: Side, qty: float, rule: str, why: str,
             **numbers: float) -> None:
        price = perp_price(symbol, view) if market == Market.PERP else view.prices[base_of(symbol)]
        if qty <= 0 or tradable_qty(symbol, qty, price) <= 0:      # dust no venue would take
            return
        intent = OrderIntent(sleeve, symbol, market, side, qty, OrderType.MARKET, f"risk_{rule}",
                             f"risk:{tag}:{rule}:{market.value}:{base_of(symbol)}",
                             reduce_only=market == Market.PERP)
        intents.append(intent)
        if sleeve not in copied:
            books[sleeve] = books[sleeve].copy()
            copied.add(sleeve)
        _simulate(books[sleeve], intent, qty, _price(intent, view), view.fees)
        events.append(Event(view.now, "risk_reduced", f"{sleeve} holds too much: {why}; {side} {qty:.8g} {symbol} "
                            f"back to the cap ({rule})", sleeve, "warning",
                            {"rule": rule, "intent": intent.key, "qty": qty, **numbers}))

    for sleeve in sleeves:
        book = books.get(sleeve)
        if book is None:
            continue
        eq = sleeve_equity(book, view)
        if eq <= 0:
            continue
        if sleeve in TREND or sleeve == Sleeve.FUNDING:
            cap = p.trend_max_asset_share if sleeve in TREND else p.funding_max_asset_share
            for sym, pos in list(book.perps.items()):
                price = perp_price(sym, view)
                held = abs(pos.qty) * price
                if held > cap * eq * over:
                    qty = (held - cap * eq) / price
                    rule = "trend_max_asset_share" if sleeve in TREND else "funding_max_asset_share"
                    trim(sleeve, sym, Market.PERP, Side.SELL if pos.qty > 0 else Side.BUY, qty, rule,
                         f"{base_of(sym)} perp {held:,.2f} USDT is {held / eq:.2%} of equity {eq:,.2f} (cap {cap:.0%})",
                         held_usdt=held, equity_usdt=eq, share=held / eq)
                    if sleeve == Sleeve.FUNDING and book.holdings.get(base_of(sym), 0.0) > 0:
                        spot = min(qty, book.holdings[base_of(sym)])
                        trim(sleeve, SPOT_SYMBOLS[base_of(sym)], Market.SPOT, Side.SELL, spot, rule,
                             "the hedge's spot leg with its perp", held_usdt=held, equity_usdt=eq)
        gross = sum(abs(x.qty) * perp_price(s, view) for s, x in book.perps.items())
        if gross > p.max_leverage * eq * over:
            share = 1 - p.max_leverage * eq / gross
            for sym, pos in list(book.perps.items()):
                trim(sleeve, sym, Market.PERP, Side.SELL if pos.qty > 0 else Side.BUY, abs(pos.qty) * share,
                     "max_leverage", f"perp notional {gross:,.2f} is {gross / eq:.2f}x equity {eq:,.2f}",
                     gross_usdt=gross, equity_usdt=eq)
    if portfolio_wide:
        portfolio = sum(sleeve_equity(b, view) for b in books.values())
        # once for every asset: a trim below sells only its own asset, so the others' stay as summed
        nets = net_exposures(books, view.prices, view.marks)
        for asset in sorted(view.prices):
            net = nets.get(asset, 0.0)
            if portfolio <= 0 or net <= p.max_asset_share * portfolio * over:
                continue
            excess = net - p.max_asset_share * portfolio
            why = f"{asset} net exposure {net:,.2f} USDT is {net / portfolio:.2%} of the portfolio {portfolio:,.2f} " \
                  f"(cap {p.max_asset_share:.0%})"
            for sleeve in (*TREND, Sleeve.TACTICAL, Sleeve.CORE):
                book = books.get(sleeve)
                if book is None or excess <= 0:
                    continue
                sym = PERP_SYMBOLS.get(asset)
                pos = book.perps.get(sym) if sym else None
                if pos is not None and pos.qty > 0:
                    price = perp_price(sym, view)
                    qty = min(pos.qty, excess / price)
                    trim(sleeve, sym, Market.PERP, Side.SELL, qty, "max_asset_share", why,
                         exposure_usdt=net, portfolio_usdt=portfolio)
                    excess -= qty * price
                free = book.holdings.get(asset, 0.0)
                if free > 0 and excess > 0:
                    qty = min(free, excess / view.prices[asset])
                    trim(sleeve, SPOT_SYMBOLS[asset], Market.SPOT, Side.SELL, qty, "max_asset_share", why,
                         exposure_usdt=net, portfolio_usdt=portfolio)
                    excess -= qty * view.prices[asset]
    return intents, events


def breaker_orders(view: RiskView) -> tuple[list[OrderIntent], dict[Sleeve, dict[str, float]]]:
    """L3: every TREND and FUNDING position closed (perps bought or sold back, FUNDING's spot
    sold). L4: every position of every sleeve closed and every coin sold to USDT (staked coins
    unstaked first). Returns the intents and the unstaking moves (sleeve -> asset -> -qty)."""
    level = view.state.level
    if level < 3 or not view.params.breakers_enabled:
        return [], {}
    sleeves = list(view.books) if level >= 4 else [*TREND, Sleeve.FUNDING]
    reason = f"breaker_l{min(level, 4)}"
    tag = minute_stamp(view.now)
    books = _books_with_open_orders(view, reducing_only=True)
    intents: list[OrderIntent] = []
    unstake: dict[Sleeve, dict[str, float]] = {}
    for sleeve in sleeves:
        book = books.get(sleeve)
        if book is None:
            continue
        for sym, pos in book.perps.items():
            if tradable_qty(sym, abs(pos.qty), perp_price(sym, view)) <= 0:    # dust no venue would take
                continue
            intents.append(OrderIntent(sleeve, sym, Market.PERP, Side.SELL if pos.qty > 0 else Side.BUY,
                                       abs(pos.qty), OrderType.MARKET, reason, f"{reason}:{tag}:{base_of(sym)}:perp",
                                       reduce_only=True))
        for asset in sorted(set(book.holdings) | set(book.staked)):
            if asset not in SPOT_SYMBOLS:
                continue
            if book.staked.get(asset, 0.0) > 0:
                unstake.setdefault(sleeve, {})[asset] = -book.staked[asset]
            qty = book.holdings.get(asset, 0.0) + book.staked.get(asset, 0.0)
            if qty > 0 and asset in view.prices and tradable_qty(SPOT_SYMBOLS[asset], qty, view.prices[asset]) > 0:
                intents.append(OrderIntent(sleeve, SPOT_SYMBOLS[asset], Market.SPOT, Side.SELL, qty,
                                           OrderType.MARKET, reason, f"{reason}:{tag}:{asset}:spot"))
    return intents, unstake
