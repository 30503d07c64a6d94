"""The paper exchange's state as JSON-ready dicts (it persists itself, like a real venue's book)."""
from __future__ import annotations

from typing import Any

from eternal.exchange.base import ExchangeOrder
from eternal.models import (
    Fill,
    FundingPayment,
    Market,
    OrderIntent,
    OrderStatus,
    OrderType,
    PerpPosition,
    Side,
    Sleeve,
    utc,
)


def _position_to_dict(p: PerpPosition) -> dict[str, Any]:
    return {"qty": p.qty, "entry_price": p.entry_price, "margin": p.margin, "leverage": p.leverage,
            "opened_at": p.opened_at.isoformat()}


def _position_from_dict(symbol: str, d: dict[str, Any]) -> PerpPosition:
    return PerpPosition(symbol, d["qty"], d["entry_price"], d["margin"], d["leverage"], utc(d["opened_at"]))


def _fill_to_dict(f: Fill) -> dict[str, Any]:
    return {"client_order_id": f.client_order_id, "ts": f.ts.isoformat(), "sleeve": f.sleeve.value,
            "symbol": f.symbol, "market": f.market.value, "side": f.side.value, "qty": f.qty, "price": f.price,
            "fee": f.fee, "fee_asset": f.fee_asset, "liquidity": f.liquidity, "trade_id": f.trade_id,
            "reason": f.reason, "leverage": f.leverage}


def _fill_from_dict(d: dict[str, Any]) -> Fill:
    return Fill(d["client_order_id"], utc(d["ts"]), Sleeve(d["sleeve"]), d["symbol"], Market(d["market"]),
                Side(d["side"]), d["qty"], d["price"], d["fee"], d["fee_asset"], d["liquidity"], d["trade_id"],
                d["reason"], d["leverage"])


def _payment_to_dict(p: FundingPayment) -> dict[str, Any]:
    return {"ts": p.ts.isoformat(), "sleeve": p.sleeve.value, "symbol": p.symbol, "qty": p.qty,
            "price": p.price, "rate": p.rate, "amount": p.amount, "expected": p.expected}


def _payment_from_dict(d: dict[str, Any]) -> FundingPayment:
    return FundingPayment(utc(d["ts"]), Sleeve(d["sleeve"]), d["symbol"], d["qty"], d["price"], d["rate"],
                          d["amount"], d["expected"])


def _intent_to_dict(i: OrderIntent) -> dict[str, Any]:
    return {"sleeve": i.sleeve.value, "symbol": i.symbol, "market": i.market.value, "side": i.side.value,
            "qty": i.qty, "order_type": i.order_type.value, "reason": i.reason, "key": i.key,
            "limit_price": i.limit_price, "post_only": i.post_only, "reduce_only": i.reduce_only,
            "scale_to_cash": i.scale_to_cash}


def intent_from_dict(d: dict[str, Any]) -> OrderIntent:
    return OrderIntent(Sleeve(d["sleeve"]), d["symbol"], Market(d["market"]), Side(d["side"]),
                       d["qty"], OrderType(d["order_type"]), d["reason"], d["key"], d["limit_price"],
                       d["post_only"], d["reduce_only"], d["scale_to_cash"])


def _order_to_dict(o: ExchangeOrder) -> dict[str, Any]:
    return {"exchange_order_id": o.exchange_order_id, "intent": _intent_to_dict(o.intent),
            "status": o.status.value, "created": o.created.isoformat(), "filled_qty": o.filled_qty,
            "fee": o.fee, "error": o.error,
            "fills": [{"ts": f.ts.isoformat(), "qty": f.qty, "price": f.price, "fee": f.fee,
                       "fee_asset": f.fee_asset, "liquidity": f.liquidity, "trade_id": f.trade_id,
                       "leverage": f.leverage}
                      for f in o.fills]}


def _order_from_dict(cid: str, d: dict[str, Any]) -> ExchangeOrder:
    i = intent_from_dict(d["intent"])
    fills = [Fill(cid, utc(f["ts"]), i.sleeve, i.symbol, i.market, i.side, f["qty"], f["price"],
                  f["fee"], f["fee_asset"], f["liquidity"], f["trade_id"], i.reason, f.get("leverage", 1.0))
             for f in d["fills"]]
    return ExchangeOrder(cid, d["exchange_order_id"], i, OrderStatus(d["status"]), utc(d["created"]),
                         d["filled_qty"], d["fee"], fills, d["error"])
