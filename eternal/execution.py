"""Order routing with idempotent client order ids.

Every intent gets an id derived from (flow, scheduled time, sleeve, intent key), at most 36
characters (Bybit's orderLinkId). Before any (re)send the executor looks the id up in our ledger
and then at the exchange, so a retry, a re-run of the same scheduled cycle or a crash after the
exchange accepted an order never places a second one.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from eternal.errors import DuplicateOrder, InsufficientFunds
from eternal.exchange.base import Exchange, ExchangeOrder, OrderRefused
from eternal.models import Event, Fill, OrderIntent, OrderRecord, OrderStatus, Sleeve, utc

SLEEVE_CODES = {Sleeve.CORE: "co", Sleeve.TREND_1: "t1", Sleeve.TREND_2: "t2",
                Sleeve.FUNDING: "fu", Sleeve.TACTICAL: "ta"}
MAX_ID_LENGTH = 36


def client_order_id(flow: str, scheduled: datetime, sleeve: Sleeve, intent_key: str) -> str:
    """'co2401010000-<23 hex>': readable sleeve and time, hashed flow + intent; 36 characters."""
    scheduled = utc(scheduled)
    digest = hashlib.sha256(
        f"{flow}|{scheduled.isoformat()}|{sleeve.value}|{intent_key}".encode()).hexdigest()
    prefix = f"{SLEEVE_CODES[sleeve]}{scheduled:%y%m%d%H%M}-"
    return prefix + digest[: MAX_ID_LENGTH - len(prefix)]


@dataclass
class ExecutionResult:
    orders: list[OrderRecord] = field(default_factory=list)   # every order of the plan, as now known
    fills: list[Fill] = field(default_factory=list)           # fills not recorded before
    events: list[Event] = field(default_factory=list)
    sent: int = 0                                             # orders actually sent this time


def sync_record(rec: OrderRecord, ex_order: ExchangeOrder, known_trades: set[str]) -> list[Fill]:
    """Bring our record in line with the exchange's order; returns the fills we had not seen."""
    rec.status = ex_order.status
    rec.exchange_order_id = ex_order.exchange_order_id
    rec.filled_qty = ex_order.filled_qty
    rec.avg_price = ex_order.avg_price
    rec.fee = ex_order.fee
    rec.error = ex_order.error
    new = [f for f in ex_order.fills if f.trade_id not in known_trades]
    known_trades.update(f.trade_id for f in new)
    return new


def scaled_event(rec: OrderRecord, now: datetime) -> Event | None:
    """A buy filled for less than asked because the cash could not cover it at the fill price."""
    asked = rec.intent.qty
    if (not rec.intent.scale_to_cash or rec.status != OrderStatus.FILLED
            or rec.filled_qty >= asked * (1 - 1e-9)):
        return None
    return Event(utc(now), "order_scaled_to_cash",
                 f"{rec.client_order_id}: {rec.intent.symbol} {rec.intent.side} filled {rec.filled_qty:.8g} "
                 f"of {asked:.8g} ({rec.filled_qty / asked:.2%}): the cash could not cover it at the fill price",
                 rec.intent.sleeve, "warning", {"client_order_id": rec.client_order_id,
                                                 "asked": asked, "filled": rec.filled_qty})


def execute(intents: Iterable[OrderIntent], exchange: Exchange, *, flow: str, scheduled: datetime,
            now: datetime, known: Mapping[str, OrderRecord],
            known_trades: set[str] | None = None, fresh: bool = False) -> ExecutionResult:
    """Send each intent at most once. `known` are our ledger's records by client order id.

    Each intent without a final record is first looked up at the venue by its client order id,
    unless `fresh`: the intents' plan was stored (write-ahead) by this very run, under the driver's
    lock, so no earlier run can have sent one of these ids and a lookup can only find nothing (on
    Bybit it costs two requests of an order's four). A venue that does know the id refuses the
    send as a reused id, and the send resolves it by the id (`DuplicateOrder` below).

    An order the venue refuses by its trading rules (`OrderRefused`: the driver rounds and drops
    by the same rules first, so this is a bug or stale rules) or for want of funds
    (`InsufficientFunds`: e.g. cash a resting order holds at the venue) is recorded as rejected
    with an alert, and the others go on: no retry can help it, and stopping there would leave a
    stored plan no later run could finish. Any other exchange error propagates as is, for a retry.
    """
    result = ExecutionResult()
    known_trades = set() if known_trades is None else known_trades
    for intent in intents:
        cid = client_order_id(flow, scheduled, intent.sleeve, intent.key)
        rec = known.get(cid)
        if rec is not None and rec.status.is_final:
            result.orders.append(rec)            # done in an earlier run: never again
            continue
        ex_order = None if fresh and rec is None else exchange.fetch_order(cid, intent.sleeve)
        if rec is None:
            rec = OrderRecord(cid, flow, utc(scheduled), intent, created_at=utc(now), updated_at=utc(now))
        if ex_order is None:
            rec.status = OrderStatus.SUBMITTED
            if intent.leverage is not None:      # idempotent: the symbol's leverage, then the order
                exchange.set_leverage(intent.sleeve, intent.symbol, intent.leverage)
            try:
                ex_order = exchange.place_order(cid, intent, now)
                from eternal.driver import _crash_point

                _crash_point("order_sent")
            except DuplicateOrder:
                ex_order = exchange.fetch_order(cid, intent.sleeve)
                if ex_order is None:
                    raise
            except OrderRefused as exc:        # by the venue's trading rules: no retry can help
                rec.status, rec.error, rec.updated_at = OrderStatus.REJECTED, str(exc), utc(now)
                result.orders.append(rec)
                result.events.append(Event(utc(now), "order_rejected", str(exc), intent.sleeve, "alert",
                                           {"client_order_id": cid, "intent": intent.key}))
                continue
            except InsufficientFunds as exc:     # final for this order: the plan goes on
                rec.status, rec.error, rec.updated_at = OrderStatus.REJECTED, str(exc), utc(now)
                result.orders.append(rec)
                result.events.append(Event(utc(now), "insufficient_funds", str(exc), intent.sleeve,
                                           "alert", {"client_order_id": cid, "intent": intent.key}))
                continue
            else:
                result.sent += 1
        elif rec.status == OrderStatus.CREATED or cid not in known:
            result.events.append(Event(utc(now), "order_recovered",
                                       f"{cid} was already accepted by {exchange.name}; not sent again",
                                       intent.sleeve, "warning", {"client_order_id": cid}))
        new_fills = sync_record(rec, ex_order, known_trades)
        result.fills.extend(new_fills)
        if new_fills and (scaled := scaled_event(rec, now)):
            result.events.append(scaled)
        rec.updated_at = utc(now)
        result.orders.append(rec)
    return result
