"""A decision as JSON, stored before anything of it is sent (the driver's write-ahead plans).

`plan_to_json` / `plan_from_json` round-trip a `Plan` with what the driver carries beside it: the
USDT each sleeve will have received by the next close, the allocation state, the deposits taken.
Floats survive exactly (JSON keeps a double's repr); datetimes are ISO strings in UTC.
"""
from __future__ import annotations

from eternal.exchange.paper_state import _intent_to_dict, intent_from_dict
from eternal.models import Event, Plan, Sleeve, StopLevel, Transfer, utc


def _event_to_dict(e: Event) -> dict:
    from eternal.store.ledger import _jsonable

    return {"ts": e.ts.isoformat(), "kind": e.kind, "message": e.message,
            "sleeve": e.sleeve.value if e.sleeve else None, "level": e.level, "data": _jsonable(e.data)}


def _event_from_dict(d: dict) -> Event:
    return Event(utc(d["ts"]), d["kind"], d["message"], Sleeve(d["sleeve"]) if d["sleeve"] else None,
                 d["level"], d["data"])


def _transfer_to_dict(t: Transfer) -> dict:
    return {"ts": t.ts.isoformat(), "from": t.from_sleeve.value if t.from_sleeve else None,
            "to": t.to_sleeve.value, "asset": t.asset, "qty": t.qty, "reason": t.reason}


def _transfer_from_dict(d: dict) -> Transfer:
    return Transfer(utc(d["ts"]), Sleeve(d["from"]) if d["from"] else None, Sleeve(d["to"]), d["asset"],
                    d["qty"], d["reason"])


def plan_to_json(plan: Plan, received: dict[Sleeve, float], allocation: dict | None,
                 deposits: list[dict]) -> dict:
    from eternal.store.ledger import _jsonable

    return {"intents": [{**_intent_to_dict(i), "leverage": i.leverage} for i in plan.intents],
            "transfers": [_transfer_to_dict(t) for t in plan.transfers],
            "stakes": {s.value: m for s, m in plan.stakes.items()},
            "stops": {s.value: {sym: [lv.price, lv.reason] for sym, lv in lv_.items()} for s, lv_ in plan.stops.items()},
            "states": {s.value: _jsonable(st) for s, st in plan.states.items()},
            "events": [_event_to_dict(e) for e in plan.events],
            "received": {s.value: v for s, v in received.items()}, "allocation": allocation,
            "deposits": deposits, "asof": plan.asof.isoformat(), "day": plan.day.isoformat()}


def plan_from_json(d: dict) -> tuple[Plan, dict[Sleeve, float], dict | None, list[dict]]:
    from dataclasses import replace

    intents = [replace(intent_from_dict(i), leverage=i.get("leverage")) for i in d["intents"]]
    plan = Plan(utc(d["asof"]), utc(d["day"]), intents, {Sleeve(s): st for s, st in d["states"].items()},
                [_event_from_dict(e) for e in d["events"]],
                stakes={Sleeve(s): m for s, m in d["stakes"].items()},
                stops={Sleeve(s): {sym: StopLevel(p, r) for sym, (p, r) in lv.items()} for s, lv in d["stops"].items()},
                transfers=[_transfer_from_dict(t) for t in d["transfers"]])
    return plan, {Sleeve(s): v for s, v in d["received"].items()}, d["allocation"], d["deposits"]
