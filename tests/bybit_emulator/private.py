"""Signed V5 endpoints of a Unified Trading Account: handlers (emu, account, params) -> result."""
from __future__ import annotations

import math
import time

from . import book, rows
from .book import QUOTE, Account, Reject

_DUPLICATE = {"linear": (110072, "OrderLinkedID is duplicate"), "spot": (170141, "Duplicate clientOrderId.")}
_CURSOR = ""


def query_api(emu, acct: Account, p: dict) -> dict:
    return {"id": str(acct.uid), "note": "emulator", "apiKey": acct.api_key, "readOnly": 0, "secret": "",
            "permissions": {"ContractTrade": ["Order", "Position"], "Spot": ["SpotTrade"],
                            "Wallet": ["AccountTransfer", "SubMemberTransfer"], "Options": [], "Derivatives": [],
                            "CopyTrading": [], "BlockTrade": [], "Exchange": [], "NFT": []},
            "ips": ["*"], "type": 1, "deadlineDay": 90, "expiredAt": "", "createdAt": "2024-01-01T00:00:00Z",
            "unified": 0, "uta": 1, "userID": acct.uid, "inviterID": 0, "vipLevel": "No VIP",
            "mktMakerLevel": "0", "affiliateID": 0, "rsaPublicKey": "", "isMaster": acct.is_master}


def account_info(emu, acct: Account, p: dict) -> dict:
    return {"marginMode": "REGULAR_MARGIN", "updatedTime": "1704067200000", "unifiedMarginStatus": 6,
            "dcpStatus": "OFF", "timeWindow": 10, "smpGroup": 0, "isMasterTrader": False,
            "spotHedgingStatus": "OFF"}


def _mark(emu, symbol: str) -> float:
    return emu.prices.get(("linear", symbol)) or emu.prices.get(("spot", symbol)) or 0.0


def _margins(emu, acct: Account) -> tuple[float, float, float, float]:
    """(unrealised PnL, position IM, position MM, open-order IM) of the linear book, in USDT."""
    upl = im = mm = order_im = 0.0
    for symbol, pos in acct.positions.items():
        if pos.size:
            upl += pos.size * (_mark(emu, symbol) - pos.entry_price)
            im += abs(pos.size) * pos.entry_price / pos.leverage
            mm += abs(pos.size) * pos.entry_price * 0.005
    for o in acct.orders.values():
        if o.is_open and o.category == "linear" and o.price:
            order_im += (o.qty - o.cum_qty) * o.price / acct.position(o.symbol).leverage
    return upl, im, mm, order_im


def _locked(acct: Account, coin: str, but=None) -> float:
    """What the account's resting spot limits hold of `coin` (`but`: not this order's share)."""
    total = 0.0
    for o in acct.orders.values():
        if o.is_open and o.category == "spot" and o.order_type == "Limit" and o is not but:
            if o.side == "Buy" and coin == QUOTE:
                total += (o.qty - o.cum_qty) * o.price
            elif o.side == "Sell" and coin == book.base_of(o.symbol):
                total += o.qty - o.cum_qty
    return total


def wallet_balance(emu, acct: Account, p: dict) -> dict:
    if p.get("accountType", "UNIFIED") != "UNIFIED":
        raise Reject(10001, f"accountType only support UNIFIED, got {p.get('accountType')!r}")
    upl, im, mm, order_im = _margins(emu, acct)
    coins, equity, wallet_usd = [], 0.0, 0.0
    wanted = set(p["coin"].split(",")) if p.get("coin") else None
    for coin, bal in acct.balances.items():
        if wanted and coin not in wanted:
            continue
        px = 1.0 if coin == QUOTE else emu.prices.get(("spot", f"{coin}{QUOTE}"), 0.0)
        is_quote = coin == QUOTE
        coins.append(rows.wallet_coin_row(
            coin, bal, locked=_locked(acct, coin), usd_value=(bal + (upl if is_quote else 0)) * px,
            upl=upl if is_quote else 0.0, position_im=im if is_quote else 0.0,
            position_mm=mm if is_quote else 0.0, order_im=order_im if is_quote else 0.0,
            cum_realised=acct.cum_realised.get(coin, 0.0)))
        wallet_usd += bal * px
        equity += (bal + (upl if is_quote else 0)) * px
    return {"list": [rows.wallet_row(coins, equity=equity, wallet=wallet_usd, im=im + order_im, mm=mm, upl=upl)]}


def create_order(emu, acct: Account, p: dict) -> dict:
    category, symbol = p.get("category"), p.get("symbol")
    if category not in ("spot", "linear"):
        raise Reject(10001, f"emulator: category {category!r} not supported")
    if not any(i["symbol"] == symbol for i in emu.instruments[category]):
        raise Reject(10001, f"params error: symbol invalid {symbol!r}")
    if p.get("orderFilter") in ("StopOrder", "tpslOrder") or (p.get("triggerPrice") and category == "spot"):
        raise Reject(10001, "emulator: spot conditional and TP/SL orders are not emulated")
    link = p.get("orderLinkId") or ""
    if link and link in acct.link_ids:
        raise Reject(*_DUPLICATE[category])
    bid, ask, last = emu.quote(category, symbol)
    if p.get("triggerPrice"):
        return _conditional(emu, acct, p, last)
    o = emu._new_order(acct, p)
    try:
        _check_funds(emu, acct, o, bid, ask)
    except Reject:
        del acct.orders[o.order_id]   # a refused order does not exist (its orderLinkId is free)
        acct.link_ids.discard(link)
        raise
    now = emu.now_ms()
    if o.order_type == "Market":
        qty = o.qty
        if emu.partial_fill_fraction is not None:
            # in whole steps of the instrument's qty, as Bybit fills (a fraction of 0.03 ETH is 0.01)
            step = _qty_step(emu, category, symbol)
            qty = max(step, round(math.floor(o.qty * emu.partial_fill_fraction / step + 1e-9) * step, 10))
            emu.partial_fill_fraction = None
            if emu.partial_fill_rest_after_s is not None:
                emu._rest_fills.append((time.monotonic() + emu.partial_fill_rest_after_s, acct, o))
                emu.partial_fill_rest_after_s = None
        book.fill(acct, o, qty, ask if o.side == "Buy" else bid, maker=False, mark=last, now_ms=now)
    else:
        crosses = (o.side == "Buy" and o.price >= ask) or (o.side == "Sell" and o.price <= bid)
        if crosses and o.time_in_force == "PostOnly":
            # Bybit accepts the request and cancels the order at once (not an error retCode)
            o.status, o.reject_reason, o.cancel_type = "Cancelled", "EC_PostOnlyWillTakeLiquidity", "CancelByUser"
        elif crosses:
            book.fill(acct, o, o.qty, ask if o.side == "Buy" else bid, maker=False, mark=last, now_ms=now)
        elif o.time_in_force in ("IOC", "FOK"):
            o.status, o.reject_reason = "Cancelled", "EC_NoImmediateQtyToFill"
    return {"orderId": o.order_id, "orderLinkId": o.link_id}


def _qty_step(emu, category: str, symbol: str) -> float:
    row = next(i for i in emu.instruments[category] if i["symbol"] == symbol)
    lot = row["lotSizeFilter"]
    return float(lot.get("qtyStep") or lot.get("basePrecision"))


def _conditional(emu, acct: Account, p: dict, last: float) -> dict:
    """A linear conditional order (triggerPrice, triggerDirection 1 rising / 2 falling): it waits
    Untriggered and becomes its market or limit order when the last price reaches the trigger
    (`BybitEmulator._match`); funds are checked then. A trigger already passed is refused, as
    Bybit does (110092 / 110093)."""
    try:
        trigger, direction = float(p["triggerPrice"]), int(p.get("triggerDirection") or 0)
    except (TypeError, ValueError):
        raise Reject(10001, f"params error: triggerPrice {p.get('triggerPrice')!r}") from None
    if direction == 1 and trigger <= last:
        raise Reject(110092, f"expect Rising, but trigger_price[{trigger}] <= current[{last}]??LastPrice")
    if direction == 2 and trigger >= last:
        raise Reject(110093, f"expect Falling, but trigger_price[{trigger}] >= current[{last}]??LastPrice")
    if direction not in (1, 2):
        raise Reject(10001, "params error: triggerDirection must be 1 or 2")
    o = emu._new_order(acct, p)
    o.status, o.trigger_price, o.trigger_direction, o.stop_order_type = "Untriggered", trigger, direction, "Stop"
    return {"orderId": o.order_id, "orderLinkId": o.link_id}


def _check_funds(emu, acct: Account, o, bid: float, ask: float) -> None:
    price = o.price or (ask if o.side == "Buy" else bid)
    if o.category == "spot":
        if o.side == "Buy":
            need, coin = o.qty * price, QUOTE
        else:
            need, coin = o.qty, book.base_of(o.symbol)
        # the order itself is already in the book (`_new_order`): its own need is not locked yet
        if acct.balances.get(coin, 0.0) - _locked(acct, coin, but=o) < need - 1e-9:
            raise Reject(170131, "Insufficient balance.")
        return
    pos = acct.position(o.symbol)
    reducing = pos.size and (pos.size > 0) != (o.side == "Buy")
    if o.reduce_only and (not reducing or o.qty > abs(pos.size) + 1e-12):
        raise Reject(110017, "Reduce-only rule not satisfied")
    if reducing and o.qty <= abs(pos.size) + 1e-12:
        return
    upl, im, _, order_im = _margins(emu, acct)
    available = acct.balances.get(QUOTE, 0.0) + upl - im - order_im
    if o.qty * price / pos.leverage + o.qty * price * book.LINEAR_TAKER_FEE > available:
        raise Reject(110007, "ab not enough for new order")


def amend_order(emu, acct: Account, p: dict) -> dict:
    o = acct.order_by(p.get("orderId"), p.get("orderLinkId"))
    if o is None or not o.is_open or o.symbol != p.get("symbol"):
        raise Reject(110001 if p.get("category") == "linear" else 170213, "order not exists or too late to replace")
    if p.get("qty"):
        o.qty = float(p["qty"])
    if p.get("price"):
        o.price = float(p["price"])
    if p.get("triggerPrice"):
        if not o.is_conditional or o.status != "Untriggered":
            raise Reject(10001, "params error: triggerPrice of an order that is not an untriggered conditional")
        o.trigger_price = float(p["triggerPrice"])
    o.updated_ms = emu.now_ms()
    emu._match(o.category, o.symbol)
    return {"orderId": o.order_id, "orderLinkId": o.link_id}


def cancel_order(emu, acct: Account, p: dict) -> dict:
    o = acct.order_by(p.get("orderId"), p.get("orderLinkId"))
    if o is None or not o.is_open or o.category != p.get("category") or o.symbol != p.get("symbol"):
        raise Reject(110001 if p.get("category") == "linear" else 170213, "Order does not exist.")
    _cancel(emu, o)
    return {"orderId": o.order_id, "orderLinkId": o.link_id}


def _cancel(emu, o) -> None:
    o.status = ("Deactivated" if o.status == "Untriggered" else
                "PartiallyFilledCanceled" if o.cum_qty and o.category == "spot" else "Cancelled")
    o.cancel_type, o.updated_ms = "CancelByUser", emu.now_ms()


def cancel_all(emu, acct: Account, p: dict) -> dict:
    done = []
    for o in list(acct.orders.values()):
        if o.is_open and o.category == p.get("category") and p.get("symbol") in (None, o.symbol):
            _cancel(emu, o)
            done.append({"orderId": o.order_id, "orderLinkId": o.link_id})
    return {"list": done, "success": "1"}


def _limit(p: dict, default: int, hi: int) -> int:
    try:
        return max(1, min(int(p.get("limit") or default), hi))
    except ValueError:
        raise Reject(10001, f"params error: limit {p.get('limit')!r}") from None


def _orders(acct: Account, p: dict, *, endpoint: str) -> list:
    category = p.get("category")
    if category not in ("spot", "linear"):
        raise Reject(10001, f"emulator: category {category!r} not supported")
    chosen = [o for o in reversed(acct.orders.values()) if o.category == category]
    by_id = p.get("orderId") or p.get("orderLinkId")
    if p.get("symbol"):
        chosen = [o for o in chosen if o.symbol == p["symbol"]]
    if p.get("orderId"):
        chosen = [o for o in chosen if o.order_id == p["orderId"]]
    if p.get("orderLinkId"):
        chosen = [o for o in chosen if o.link_id == p["orderLinkId"]]
    if p.get("orderFilter") in ("Order", "StopOrder"):   # absent: every kind (a unified account)
        chosen = [o for o in chosen if o.is_conditional == (p["orderFilter"] == "StopOrder")]
    if endpoint == "realtime":
        # by id: open or one of the recent closed orders; openOnly=1: recent closed ones
        if not by_id:
            chosen = [o for o in chosen if o.is_open == (str(p.get("openOnly", "0")) == "0")]
        chosen = chosen[:500]
    else:
        if p.get("orderStatus"):
            chosen = [o for o in chosen if o.status == p["orderStatus"]]
        elif not by_id:
            chosen = [o for o in chosen if not o.is_open]
    return chosen[: _limit(p, 20, 50)]


def open_orders(emu, acct: Account, p: dict) -> dict:
    return {"nextPageCursor": _CURSOR, "category": p.get("category"),
            "list": [rows.order_row(o, endpoint="realtime", cursor=_CURSOR) for o in _orders(acct, p, endpoint="realtime")]}


def order_history(emu, acct: Account, p: dict) -> dict:
    return {"nextPageCursor": _CURSOR, "category": p.get("category"),
            "list": [rows.order_row(o, endpoint="history", cursor=_CURSOR) for o in _orders(acct, p, endpoint="history")]}


_DAYS_7_MS = 7 * 86_400_000


def _window(emu, p: dict, items: list[dict], stamp: str) -> list[dict]:
    """Bybit's time window of the execution list and the transaction log: at most 7 days; only
    startTime: 7 days from it; only endTime: 7 days up to it; neither: the last 7 days."""
    lo, hi = p.get("startTime"), p.get("endTime")
    lo, hi = (int(lo) if lo else None), (int(hi) if hi else None)
    if lo is not None and hi is not None and hi - lo > _DAYS_7_MS:
        raise Reject(10001, "params error: the time span between startTime and endTime must be within 7 days")
    if lo is None and hi is None:
        hi = emu.now_ms()
    lo = hi - _DAYS_7_MS if lo is None else lo
    hi = lo + _DAYS_7_MS if hi is None else hi
    return [r for r in items if lo <= r[stamp] <= hi]


def executions(emu, acct: Account, p: dict) -> dict:
    category = p.get("category", "linear")
    chosen = [e for e in reversed(acct.executions) if e["category"] == category]
    for key in ("symbol", "orderId", "orderLinkId", "execType"):
        if p.get(key):
            chosen = [e for e in chosen if e[key] == p[key]]
    chosen = _window(emu, p, chosen, "execTime")[: _limit(p, 50, 100)]
    return {"nextPageCursor": _CURSOR, "category": category, "list": [rows.execution_row(e, _CURSOR) for e in chosen]}


def transaction_log(emu, acct: Account, p: dict) -> dict:
    chosen = list(reversed(acct.ledger))
    for key, field in (("currency", "currency"), ("category", "category"), ("type", "type")):
        if p.get(key):
            chosen = [r for r in chosen if r[field] == p[key]]
    chosen = _window(emu, p, chosen, "transactionTime")[: _limit(p, 20, 50)]
    return {"nextPageCursor": _CURSOR, "list": [rows.ledger_row(r, _CURSOR) for r in chosen]}


def positions(emu, acct: Account, p: dict) -> dict:
    category = p.get("category")
    if category != "linear":
        raise Reject(10001, f"emulator: positions only for linear, got {category!r}")
    if p.get("symbol"):
        symbols = [p["symbol"]]   # a flat position answers too, as on Bybit
    elif p.get("settleCoin") or p.get("baseCoin"):
        symbols = [s for s, pos in acct.positions.items() if pos.size]
    else:
        raise Reject(10001, "symbol or settleCoin is required")
    now = emu.now_ms()
    out = [rows.position_row(s, acct.position(s), _mark(emu, s), now) for s in symbols]
    return {"nextPageCursor": _CURSOR, "category": category, "list": out}


def set_leverage(emu, acct: Account, p: dict) -> dict:
    symbol = p.get("symbol")
    try:
        lev = float(p.get("buyLeverage"))
    except (TypeError, ValueError):
        raise Reject(10001, "params error: buyLeverage") from None
    if p.get("sellLeverage") != p.get("buyLeverage") or not 1 <= lev <= 100:
        raise Reject(10001, f"params error: leverage {p.get('buyLeverage')}/{p.get('sellLeverage')}")
    pos = acct.position(symbol)
    if pos.leverage == lev:
        raise Reject(110043, "leverage not modified")
    pos.leverage = lev
    return {}


def trading_stop(emu, acct: Account, p: dict) -> dict:
    pos = acct.positions.get(p.get("symbol") or "")
    if pos is None or not pos.size:
        raise Reject(10001, "can not set tp/sl/ts for zero position")
    if "stopLoss" in p:
        sl = float(p["stopLoss"] or 0)
        pos.stop_loss = sl or None
    return {}


def _at_precision(balance: float) -> float:
    """A balance as Bybit holds it (8 decimals): the emulator sums floats where Bybit sums decimals,
    so a whole balance sent as its 8-decimal text (55.67710663) must not be refused for the float's
    last bits (55.67710662999366)."""
    return round(balance, 8)


def _transfer(emu, acct: Account, p: dict) -> dict:
    tid = p.get("transferId")
    if not tid:
        raise Reject(10001, "params error: transferId")
    if tid in acct.transfers:      # idempotent: the same id moves the money once
        return {"transferId": tid, "status": "SUCCESS"}
    coin, amount = p.get("coin"), float(p.get("amount") or 0)
    wallets = {"UNIFIED": acct.balances, "FUND": acct.fund}
    source, target = wallets.get(p.get("fromAccountType")), wallets.get(p.get("toAccountType"))
    if source is None or target is None or source is target:
        raise Reject(10001, f"emulator: between UNIFIED and FUND only, got {p.get('fromAccountType')!r} -> "
                            f"{p.get('toAccountType')!r}")
    if not amount > 0 or _at_precision(source.get(coin, 0.0)) < amount:
        raise Reject(131212, "insufficient balance")
    source[coin] = source.get(coin, 0.0) - amount
    target[coin] = target.get(coin, 0.0) + amount
    acct.transfers[tid] = {"transferId": tid, "coin": coin, "amount": rows.num(amount),
                           "fromAccountType": p.get("fromAccountType"), "toAccountType": p.get("toAccountType"),
                           "timestamp": str(emu.now_ms()), "status": "SUCCESS"}
    return {"transferId": tid, "status": "SUCCESS"}


def transfer_list(emu, acct: Account, p: dict) -> dict:
    chosen = [t for t in reversed(acct.transfers.values()) if p.get("coin") in (None, t["coin"])
              and p.get("transferId") in (None, t["transferId"])]
    return {"list": [{**t, "nextPageCursor": _CURSOR} for t in chosen[: _limit(p, 20, 50)]],
            "nextPageCursor": _CURSOR}


_DAYS_30_MS = 30 * 86_400_000


def deposits(emu, acct: Account, p: dict) -> dict:
    """The account's on-chain deposits, newest first, with `successAt` in [startTime, endTime]: as
    on Bybit, the window is at most 30 days (default: the 30 days up to now, or from startTime on),
    every status is listed (the caller filters), and a page ends with the next page's cursor."""
    lo, hi = p.get("startTime"), p.get("endTime")
    hi = int(hi) if hi else (int(lo) + _DAYS_30_MS if lo else emu.now_ms())
    lo = int(lo) if lo else hi - _DAYS_30_MS
    if not 0 <= hi - lo <= _DAYS_30_MS:
        raise Reject(10001, "params error: endTime - startTime must be within 30 days")
    chosen = [d for d in reversed(acct.deposits) if lo <= int(d["successAt"]) <= hi
              and p.get("coin") in (None, d["coin"]) and p.get("id") in (None, d["id"])
              and p.get("txID") in (None, d["txID"])]
    start = int(p.get("cursor") or 0)
    limit = _limit(p, 50, 50)
    page = [{k: v for k, v in d.items() if not k.startswith("_")} for d in chosen[start:start + limit]]
    more = start + limit < len(chosen)
    return {"rows": page, "nextPageCursor": str(start + limit) if more else ""}


def universal_transfer(emu, acct: Account, p: dict) -> dict:
    """Between two member ids (main-sub, sub-sub), made with the master's key; a sub's key may only
    move its own money to the master (Bybit's rule). The same transferId moves the money once and
    is refused after that."""
    tid = p.get("transferId")
    if not tid:
        raise Reject(10001, "params error: transferId")
    if tid in acct.universal:      # the venue may refuse a reused id (its code is not documented)
        raise Reject(10001, f"params error: transferId {tid} already used")
    members = {str(a.uid): a for a in emu.accounts.values()}
    src, dst = members.get(str(p.get("fromMemberId"))), members.get(str(p.get("toMemberId")))
    if src is None or dst is None:
        raise Reject(10001, f"params error: unknown member id {p.get('fromMemberId')!r} or {p.get('toMemberId')!r}")
    if not acct.is_master and not (src is acct and dst.is_master):
        raise Reject(10005, "Permission denied, please check your API key permissions.")
    wallets = {"UNIFIED": "balances", "FUND": "fund"}
    from_type, to_type = p.get("fromAccountType"), p.get("toAccountType")
    if from_type not in wallets or to_type not in wallets:
        raise Reject(10001, f"emulator: account types UNIFIED and FUND only, got {from_type!r} -> {to_type!r}")
    coin, amount = p.get("coin"), float(p.get("amount") or 0)
    source, target = getattr(src, wallets[from_type]), getattr(dst, wallets[to_type])
    if not amount > 0 or _at_precision(source.get(coin, 0.0)) < amount:
        raise Reject(131212, "insufficient balance")
    source[coin] = source.get(coin, 0.0) - amount
    target[coin] = target.get(coin, 0.0) + amount
    acct.universal[tid] = {"transferId": tid, "coin": coin, "amount": rows.num(amount),
                           "fromMemberId": str(src.uid), "toMemberId": str(dst.uid), "fromAccountType": from_type,
                           "toAccountType": to_type, "timestamp": str(emu.now_ms()), "status": "SUCCESS"}
    return {"transferId": tid, "status": "SUCCESS"}


def universal_transfer_list(emu, acct: Account, p: dict) -> dict:
    """The universal transfers made with this key, newest first; `transferId` filters."""
    found = [r for r in acct.universal.values() if not p.get("transferId") or r["transferId"] == p["transferId"]]
    return {"list": sorted(found, key=lambda r: -int(r["timestamp"])), "nextPageCursor": ""}


def coin_info(emu, acct: Account, p: dict) -> dict:
    coins = [p["coin"]] if p.get("coin") else emu.coins
    return {"rows": [rows.coin_info_row(c, c not in emu.withdraw_suspended) for c in coins]}


def fee_rate(emu, acct: Account, p: dict) -> dict:
    maker, taker = ((book.SPOT_FEE, book.SPOT_FEE) if p.get("category") == "spot"
                    else (book.LINEAR_MAKER_FEE, book.LINEAR_TAKER_FEE))
    return {"list": [{"symbol": p.get("symbol", ""), "baseCoin": "", "takerFeeRate": rows.num(taker),
                      "makerFeeRate": rows.num(maker)}]}


PRIVATE_ROUTES = {
    "/v5/user/query-api": query_api,
    "/v5/account/info": account_info,
    "/v5/account/wallet-balance": wallet_balance,
    "/v5/account/transaction-log": transaction_log,
    "/v5/account/fee-rate": fee_rate,
    "/v5/order/create": create_order,
    "/v5/order/amend": amend_order,
    "/v5/order/cancel": cancel_order,
    "/v5/order/cancel-all": cancel_all,
    "/v5/order/realtime": open_orders,
    "/v5/order/history": order_history,
    "/v5/execution/list": executions,
    "/v5/position/list": positions,
    "/v5/position/set-leverage": set_leverage,
    "/v5/position/trading-stop": trading_stop,
    "/v5/asset/transfer/inter-transfer": _transfer,
    "/v5/asset/transfer/universal-transfer": universal_transfer,
    "/v5/asset/transfer/query-inter-transfer-list": transfer_list,
    "/v5/asset/transfer/query-universal-transfer-list": universal_transfer_list,
    "/v5/asset/deposit/query-record": deposits,
    "/v5/asset/coin/query-info": coin_info,
}

