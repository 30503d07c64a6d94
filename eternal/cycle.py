"""The daily cycle, pure: (Snapshot, Settings) -> Plan. Runs the same live, in paper and in replay."""
from __future__ import annotations

from eternal.config import Settings
from eternal.engines import core_hodl
from eternal.models import Plan, Sleeve, Snapshot

ENGINES = {Sleeve.CORE: core_hodl}
"""Engines implemented so far, in the order the cycle runs them."""


def daily(snap: Snapshot, settings: Settings, sleeves: tuple[Sleeve, ...] | None = None) -> Plan:
    plan = Plan(snap.asof, snap.day, [], {}, [])
    for sleeve, engine in ENGINES.items():
        if sleeve not in snap.books or (sleeves is not None and sleeve not in sleeves):
            continue
        params = getattr(settings, sleeve.weight_field)
        decision = engine.decide(snap.states.get(sleeve), snap, params)
        plan.intents += decision.intents
        plan.events += decision.events
        plan.states[sleeve] = decision.state
        if decision.stake:
            plan.stakes[sleeve] = decision.stake
    return plan
