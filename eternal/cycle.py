"""The daily cycle, pure: (Snapshot, Settings) -> Plan. Runs the same live, in paper and in replay."""
from __future__ import annotations

from collections.abc import Callable

from eternal.config import Settings
from eternal.engines import core_hodl, trend
from eternal.models import EngineDecision, Plan, Sleeve, Snapshot


def _core(state, snap: Snapshot, settings: Settings, sleeve: Sleeve) -> EngineDecision:
    return core_hodl.decide(state, snap, settings.core)


def _trend(state, snap: Snapshot, settings: Settings, sleeve: Sleeve) -> EngineDecision:
    return trend.decide(state, snap, getattr(settings, sleeve.weight_field), sleeve)


ENGINES: dict[Sleeve, Callable[..., EngineDecision]] = {
    Sleeve.CORE: _core,
    Sleeve.TREND_1: _trend,
    Sleeve.TREND_2: _trend,
}
"""Engines implemented so far, in the order the cycle runs them."""


def daily(snap: Snapshot, settings: Settings, sleeves: tuple[Sleeve, ...] | None = None) -> Plan:
    plan = Plan(snap.asof, snap.day, [], {}, [])
    for sleeve, engine in ENGINES.items():
        if sleeve not in snap.books or (sleeves is not None and sleeve not in sleeves):
            continue
        decision = engine(snap.states.get(sleeve), snap, settings, sleeve)
        plan.intents += decision.intents
        plan.events += decision.events
        plan.states[sleeve] = decision.state
        if decision.stake:
            plan.stakes[sleeve] = decision.stake
        if decision.stops:
            plan.stops[sleeve] = decision.stops
    return plan
