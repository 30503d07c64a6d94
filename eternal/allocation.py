"""Capital orchestration (spec chapter 6), pure: regimes, target weights, rebalancing, deposits.

The regime is read from BTC's daily data on every cycle and recorded, but a regime change alone
never trades: its targets apply at the quarterly rebalance, and whenever a sleeve drifts 10 points
or more above its target (then only that sleeve's excess moves). Money moves between sleeves only
as transfers; a sleeve that lacks the cash raises it by its own rules first (`raise_cash`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel

from eternal.config import AllocationParams
from eternal.errors import RiskHalt
from eternal.instruments import tradable_qty
from eternal.models import (
    QUOTE,
    SPOT_SYMBOLS,
    base_of,
    Event,
    Market,
    OrderIntent,
    OrderType,
    Side,
    Sleeve,
    SleeveBook,
    Transfer,
    split_transfer_qty,
)

TREND = (Sleeve.TREND_1, Sleeve.TREND_2)


class Regime(StrEnum):
    BEAR = "bear"
    HIGH_VOLATILITY = "high_volatility"
    STRONG_BULL = "strong_bull"
    PRE_HALVING = "pre_halving"
    BASE = "base"


PRECEDENCE = (Regime.BEAR, Regime.HIGH_VOLATILITY, Regime.STRONG_BULL, Regime.PRE_HALVING)


@dataclass(frozen=True)
class MarketRegimeInputs:
    """BTC on the decision day: close, SMA50, SMA200, ADX(14), 30-day realised volatility."""

    day: datetime
    close: float
    sma50: float
    sma200: float
    adx: float
    volatility: float


@dataclass(frozen=True)
class Move:
    """USDT to move between two sleeves (from None: a deposit from outside)."""

    from_sleeve: Sleeve | None
    to_sleeve: Sleeve
    usdt: float
    reason: str


def detect_regime(x: MarketRegimeInputs, params: AllocationParams) -> tuple[Regime, list[str]]:
    """The regime of the day and every condition that held (precedence: Bear, High Volatility,
    Strong Bull, Pre-Halving, Base). A missing indicator (too little history) never holds."""
    held: dict[Regime, str] = {}
    ok = lambda *v: all(not math.isnan(a) for a in v)           # noqa: E731
    if ok(x.sma50, x.sma200) and x.close < x.sma200 and x.sma50 < x.sma200:
        held[Regime.BEAR] = f"close {x.close:,.2f} < SMA200 {x.sma200:,.2f} and SMA50 {x.sma50:,.2f} < SMA200"
    if ok(x.volatility) and x.volatility > params.high_volatility:
        held[Regime.HIGH_VOLATILITY] = f"30-day volatility {x.volatility:.3f} > {params.high_volatility:.2f}"
    if ok(x.adx, x.sma200) and x.adx > params.strong_bull_adx and x.close > x.sma200:
        held[Regime.STRONG_BULL] = f"ADX {x.adx:.1f} > {params.strong_bull_adx:.0f} and close > SMA200 {x.sma200:,.2f}"
    day = x.day.date()
    for halving in params.halvings:
        if timedelta(0) < halving - day <= timedelta(days=params.pre_halving_days):
            held[Regime.PRE_HALVING] = f"{(halving - day).days} days before the {halving} halving"
    for regime in PRECEDENCE:
        if regime in held:
            return regime, [held[r] for r in PRECEDENCE if r in held]
    return Regime.BASE, []


def targets(regime: Regime | str, params: AllocationParams,
            base: dict[Sleeve, float] | None = None) -> dict[Sleeve, float]:
    """The regime's targets. `base`: the configured sleeve weights (ETERNAL_WEIGHTS__*), which are
    the Base regime's targets; a sleeve weighted 0 there is switched off in every regime (the
    others share its target in proportion)."""
    if base is not None and Regime(regime) == Regime.BASE:
        return dict(base)
    w = params.targets[Regime(regime).value]
    out = {Sleeve.CORE: w.core, Sleeve.TREND_1: w.trend * params.trend_1_share,
           Sleeve.TREND_2: w.trend * (1 - params.trend_1_share), Sleeve.FUNDING: w.funding,
           Sleeve.TACTICAL: w.tactical}
    if base is not None:
        out = {s: (v if base.get(s, 0.0) > 0 else 0.0) for s, v in out.items()}
        total = sum(out.values())
        out = {s: v / total for s, v in out.items()} if total > 0 else dict(base)
    return out


def targets_in_force(state: dict | None, params: AllocationParams,
                     base: dict[Sleeve, float] | None = None) -> dict[Sleeve, float]:
    """The targets of the regime in force in a stored allocation state (none yet: Base)."""
    active = AllocationState.model_validate(state or {}).active
    return targets(active or Regime.BASE, params, base)


def _groups(values: dict[Sleeve, float]) -> dict[str, float]:
    """TREND-1 and TREND-2 are one sleeve for the band (the spec's TREND)."""
    out = {s.value: v for s, v in values.items() if s not in TREND}
    out["trend"] = sum(values.get(s, 0.0) for s in TREND)
    return out


def _members(group: str) -> tuple[Sleeve, ...]:
    return TREND if group == "trend" else (Sleeve(group),)


def band_moves(equity: dict[Sleeve, float], target: dict[Sleeve, float], params: AllocationParams,
               quarterly: bool = False) -> list[Move]:
    """Transfers that bring overweight sleeves back to target.

    Band (every cycle): a sleeve (TREND counted as one) 10 points or more above its target gives
    its excess: TREND's goes 50/30/20 to CORE/FUNDING/TACTICAL (volatility harvesting), any other's
    to the underweight sleeves in proportion to their shortfall. Quarterly: every sleeve above
    target gives its excess to the sleeves below, in proportion to their shortfall."""
    total = sum(equity.values())
    if total <= 0:
        return []
    # the band sees TREND as one sleeve; the quarterly rebalance brings each of its two to target
    group = (lambda v: {s.value: x for s, x in v.items()}) if quarterly else _groups
    w, t = group({s: e / total for s, e in equity.items()}), group(target)
    over = {g: w[g] - t[g] for g in t if w.get(g, 0.0) - t[g] >= (0.0 if quarterly else params.band - 1e-12)}
    over = {g: d for g, d in over.items() if d * total >= params.min_transfer_usdt}
    moves: list[Move] = []
    for g, excess in over.items():
        usdt = excess * total
        if g == "trend" and not quarterly:
            split = {Sleeve(k): v for k, v in params.harvest_to.items()}
            why = f"volatility harvesting: TREND {w[g]:.1%} vs target {t[g]:.1%}"
        else:
            short = {Sleeve(k) if k != "trend" else None: t[k] - w.get(k, 0.0) for k in t
                     if k not in over and t[k] - w.get(k, 0.0) > 0}
            split = _split_trend(short, equity, target)
            why = (f"quarterly: {g} {w[g]:.1%} vs target {t[g]:.1%}" if quarterly
                   else f"band: {g} {w[g]:.1%} is {excess:.1%} above its target {t[g]:.1%}")
        total_share = sum(split.values())
        if total_share <= 0:
            continue
        givers = _members(g)
        give_eq = sum(equity.get(s, 0.0) for s in givers)
        for giver in givers:
            part = usdt * (equity.get(giver, 0.0) / give_eq if give_eq > 0 else 1 / len(givers))
            for to, share in split.items():
                amount = part * share / total_share
                if amount >= params.min_transfer_usdt / len(givers) and to != giver:
                    moves.append(Move(giver, to, amount, why))
    return moves


def _split_trend(short: dict, equity: dict[Sleeve, float], target: dict[Sleeve, float]) -> dict[Sleeve, float]:
    """Shortfalls keyed by sleeve; TREND's (key None) is shared 3:1 by its two sleeves' targets."""
    out: dict[Sleeve, float] = {}
    for k, v in short.items():
        if k is None:
            t = sum(target[s] for s in TREND)
            for s in TREND:
                out[s] = out.get(s, 0.0) + v * (target[s] / t if t > 0 else 0.5)
        else:
            out[k] = out.get(k, 0.0) + v
    return out


def deposit_split(amount: float, equity: dict[Sleeve, float], target: dict[Sleeve, float]) -> dict[Sleeve, float]:
    """A deposit goes to the most underweight sleeve first, up to its target; any remainder is
    split by target weights. Weights are measured after the deposit (the target of the new total)."""
    if not amount > 0:
        raise ValueError(f"a deposit must be positive, got {amount}")
    total = sum(equity.values()) + amount
    gaps = {s: target[s] * total - equity.get(s, 0.0) for s in target}
    weights_gap = {s: target[s] - equity.get(s, 0.0) / total for s in target}
    out: dict[Sleeve, float] = {}
    first = max(weights_gap, key=lambda s: (weights_gap[s], -list(target).index(s)))
    if gaps[first] > 0:
        out[first] = min(amount, gaps[first])
    rest = amount - out.get(first, 0.0)
    if rest > 0:
        for s, w in target.items():
            out[s] = out.get(s, 0.0) + rest * w
    return {s: v for s, v in out.items() if v > 0}


def withdrawal_allowed(breaker_active: bool) -> None:
    if breaker_active:
        raise RiskHalt("withdrawals are refused while a circuit breaker is active; resume first")


def raise_cash(book: SleeveBook, usdt: float, closes: dict[str, float], key: str, reason: str,
               marks: dict[str, float] | None = None) -> list[OrderIntent]:
    """Orders that free `usdt` beyond the sleeve's cash by reducing every position by the same
    fraction: CORE sells its coins pro rata, TREND reduces both perps pro rata (reduce-only), FUNDING
    unwinds both legs together (spot and short alike, so the hedge stays whole). A perp frees its
    margin plus its unrealised P&L. The transfer takes what is free at each cycle until paid."""
    need = usdt - book.cash
    spot = {a: book.holdings.get(a, 0.0) * closes[a] for a in SPOT_SYMBOLS
            if book.holdings.get(a, 0.0) > 0 and a in closes}
    perps = {sym: max(0.0, p.margin + p.unrealised((marks or {}).get(sym, closes.get(base_of(sym), p.entry_price))))
             for sym, p in book.perps.items() if p.qty}
    value = sum(spot.values()) + sum(perps.values())
    if need <= 0 or value <= 0:
        return []
    frac = min(1.0, need / value)
    # only what the exchange would take (on the step, at least its minimums): a smaller need waits
    # in what is owed until it adds up to an order
    intents = [OrderIntent(book.sleeve, SPOT_SYMBOLS[a], Market.SPOT, Side.SELL, qty, OrderType.MARKET, reason,
                           f"{key}:{a}:sell") for a in spot
               if (qty := tradable_qty(SPOT_SYMBOLS[a], book.holdings[a] * frac, closes[a])) > 0]
    for sym, p in book.perps.items():
        mark = (marks or {}).get(sym, closes.get(base_of(sym), p.entry_price))
        if sym in perps and (qty := tradable_qty(sym, abs(p.qty) * frac, mark)) > 0:
            intents.append(OrderIntent(book.sleeve, sym, Market.PERP, Side.SELL if p.qty > 0 else Side.BUY,
                                       qty, OrderType.MARKET, reason, f"{key}:{base_of(sym)}:reduce",
                                       reduce_only=True))
    return intents


def cash_transfers(moves: list[Move], books: dict[Sleeve, SleeveBook], ts: datetime):
    """The part of each move the giver's free cash covers now, and what it still owes."""
    free = {s: b.cash for s, b in books.items()}
    now, owed = [], []
    for m in moves:
        pay = m.usdt if m.from_sleeve is None else max(0.0, min(m.usdt, free.get(m.from_sleeve, 0.0)))
        if m.from_sleeve is not None:
            free[m.from_sleeve] -= pay
        if pay > 0:
            now.append(Transfer(ts, m.from_sleeve, m.to_sleeve, QUOTE, pay, m.reason))
        if m.usdt - pay > 1e-9:
            owed.append(Move(m.from_sleeve, m.to_sleeve, m.usdt - pay, m.reason))
    return now, owed


class AllocationState(BaseModel):
    regime: Regime | None = None
    regime_since: datetime | None = None
    active: Regime | None = None                # whose targets are in force (set quarterly or on a band cross)
    quarter_handled: datetime | None = None     # last quarter end already rebalanced
    owed: list[dict] = []                       # moves the givers' cash did not cover yet


@dataclass
class Orchestration:
    transfers: list[Transfer]
    intents: list[OrderIntent]
    events: list[Event]
    state: dict
    regime: Regime
    targets: dict[Sleeve, float]
    requests: dict[Sleeve, float] = field(default_factory=dict)   # owed by sleeves that sell themselves


def orchestrate(state_json: dict | None, day: datetime, asof: datetime, books: dict[Sleeve, SleeveBook],
                equity: dict[Sleeve, float], closes: dict[str, float], regime_inputs: MarketRegimeInputs | None,
                params: AllocationParams, deposit_usdt: float = 0.0, rebalance: bool = True,
                quarterly_allowed: bool = True, prefix: str = "allocation:",
                base: dict[Sleeve, float] | None = None, marks: dict[str, float] | None = None) -> Orchestration:
    """One cycle of the orchestration layer, before the engines decide: record the regime, split a
    deposit, pay what earlier rebalances still owe, and on the quarter's first cycle (or when a
    sleeve crosses the band) move value between sleeves. Transfers take the givers' free cash;
    the givers reduce their positions pro rata for the rest (`raise_cash`; TACTICAL, whose coins
    are its engine's lots, pays from cash as it frees), paid at the next cycles."""
    from eternal.engines.core_hodl import quarter_end_on_or_before

    state = AllocationState.model_validate(state_json or {})
    events: list[Event] = []

    def event(kind: str, message: str, level: str = "info", **data) -> None:
        events.append(Event(asof, kind, message, None, level, data))

    regime, why = detect_regime(regime_inputs, params) if regime_inputs else (Regime.BASE, [])
    if regime != state.regime:
        event("regime_change", f"regime {state.regime or 'none'} -> {regime}: " + ("; ".join(why) or "no condition holds"),
              previous=state.regime, regime=regime, conditions=why)
        state.regime, state.regime_since = regime, day
    if state.active is None:
        state.active = Regime.BASE                # the starting weights are the base targets
    target = targets(state.active, params, base)
    moves: list[Move] = []
    equity = dict(equity)
    if deposit_usdt > 0:
        split = split_transfer_qty(deposit_usdt, deposit_split(deposit_usdt, equity, target))   # as the venue moves it
        moves += [Move(None, s, v, f"deposit of {deposit_usdt:,.2f} USDT") for s, v in split.items()]
        event("deposit", f"{deposit_usdt:,.2f} USDT deposited: " + ", ".join(f"{s} {v:,.2f}" for s, v in split.items()),
              usdt=deposit_usdt, split={s.value: v for s, v in split.items()})
        for s, v in split.items():
            equity[s] = equity.get(s, 0.0) + v
    quarter_end = quarter_end_on_or_before(day)
    if state.quarter_handled is None:
        state.quarter_handled = quarter_end          # the first cycle is not a quarter end
    quarterly = quarterly_allowed and quarter_end > state.quarter_handled
    if rebalance and state.owed and not quarterly:
        moves += [Move(Sleeve(m["from"]), Sleeve(m["to"]), m["usdt"], m["reason"]) for m in state.owed]
    elif rebalance:
        # A regime change alone never trades: the band is measured against the targets in force;
        # only a quarter end or a real 10-point cross brings in the current regime's targets.
        crossed = bool(band_moves(equity, target, params))
        if quarterly or crossed:
            if state.active != regime:
                event("targets_applied", f"targets of the {regime} regime now in force (were {state.active})",
                      regime=regime, previous=state.active)
            state.active, target = regime, targets(regime, params, base)
        new = band_moves(equity, target, params, quarterly) if quarterly or crossed else []
        if quarterly:
            state.quarter_handled = quarter_end
            event("quarterly_rebalance", f"quarter ended {quarter_end:%Y-%m-%d}: sleeves to the {regime} targets, "
                  f"{len(new)} transfers", regime=regime, targets={s.value: t for s, t in target.items()},
                  weights={s.value: e / sum(equity.values()) for s, e in equity.items()} if equity else {})
        for m in new:
            kind = "volatility_harvesting" if m.reason.startswith("volatility") else "sleeve_rebalance"
            event(kind, f"{m.from_sleeve} -> {m.to_sleeve}: {m.usdt:,.2f} USDT ({m.reason})",
                  usdt=m.usdt, from_sleeve=m.from_sleeve, to_sleeve=m.to_sleeve)
        moves += new
    now, owed = cash_transfers([Move(m.from_sleeve, m.to_sleeve, m.usdt,
                                     m.reason if m.from_sleeve is None else f"{prefix} {m.reason}")
                                for m in moves], books, asof)
    intents: list[OrderIntent] = []
    for giver in dict.fromkeys(m.from_sleeve for m in owed if m.from_sleeve is not None):
        if giver == Sleeve.TACTICAL:    # its coins are lots its engine accounts for: it pays in cash
            continue
        owes = sum(m.usdt for m in owed if m.from_sleeve == giver)
        book = books[giver].copy()
        book.cash = 0.0                              # its free cash already went to the transfers now
        intents += raise_cash(book, owes, closes, "allocation", f"allocation: raising {owes:,.2f} USDT", marks)
    state.owed = [{"from": m.from_sleeve.value, "to": m.to_sleeve.value, "usdt": m.usdt,
                   "reason": m.reason.removeprefix(f"{prefix} ")} for m in owed if m.from_sleeve is not None]
    requests = {Sleeve.TACTICAL: owes} if (owes := sum(m.usdt for m in owed if m.from_sleeve == Sleeve.TACTICAL)) else {}
    return Orchestration(now, intents, events, state.model_dump(mode="json"), regime, target, requests)


def with_transfers(snap, transfers: list[Transfer], requests: dict[Sleeve, float] | None = None):
    """The snapshot the engines see after this cycle's allocation: books moved, and what each
    sleeve received (or had taken) added to its inflows."""
    from dataclasses import replace

    from eternal import ledger

    # the engines read books and never change them: copied only when a transfer moves them
    books = {s: b.copy() for s, b in snap.books.items()} if transfers else snap.books
    inflows = dict(snap.inflows)
    for t in transfers:
        ledger.apply_transfer(books, t)
        if t.asset == QUOTE:
            inflows[t.to_sleeve] = inflows.get(t.to_sleeve, 0.0) + t.qty
            if t.from_sleeve is not None:
                inflows[t.from_sleeve] = inflows.get(t.from_sleeve, 0.0) - t.qty
    return replace(snap, books=books, inflows=inflows, cash_requests=dict(requests or {}))


def merged(orch: Orchestration, plan):
    """The cycle's plan with the allocation's transfers, sales and events first."""
    for i in orch.intents:       # coins sold to raise cash are not staked by the engine first
        stakes = plan.stakes.get(i.sleeve, {})
        asset = i.symbol.split("/")[0]
        if stakes.get(asset, 0.0) > 0:
            del stakes[asset]
    plan.intents = orch.intents + plan.intents
    plan.transfers = orch.transfers + plan.transfers
    plan.events = orch.events + plan.events
    return plan


def weights_of(equity: dict[Sleeve, float]) -> dict[Sleeve, float]:
    total = sum(equity.values())
    return {s: e / total for s, e in equity.items()} if total > 0 else {s: 0.0 for s in equity}
