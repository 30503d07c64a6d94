"""Bybit V5 response rows with the key sets of real captured responses.

The key sets follow ccxt's static response fixtures (/work/shared/fixtures/ccxt-static/
bybit.response.json); where the fixture holds captures of different vintages for one endpoint and
category, the newest capture wins (e.g. linear tickers carry `preOpenPrice` and `timestamp`).
Some captures carry `nextPageCursor` inside each row: Bybit did so, and so do we.
"""
from __future__ import annotations


def num(x: float | int | None) -> str:
    """Bybit's decimal strings: no exponent, no trailing zeros; None -> ''."""
    if x is None:
        return ""
    s = f"{float(x):.10f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def order_row(o, *, endpoint: str, cursor: str) -> dict:
    """One order of /v5/order/realtime or /v5/order/history (`o` is a book.Order)."""
    avg = o.cum_value / o.cum_qty if o.cum_qty else None
    common = {
        "symbol": o.symbol, "orderType": o.order_type, "orderLinkId": o.link_id,
        "slLimitPrice": "0", "orderId": o.order_id, "cancelType": o.cancel_type,
        "avgPrice": num(avg) if avg else ("" if o.category == "linear" else "0"),
        "stopOrderType": o.stop_order_type, "lastPriceOnCreated": num(o.last_price_on_created),
        "orderStatus": o.status, "takeProfit": "", "cumExecValue": num(o.cum_value),
        "smpType": "None", "triggerDirection": str(o.trigger_direction), "blockTradeId": "",
        "rejectReason": o.reject_reason, "isLeverage": "", "price": num(o.price or 0),
        "orderIv": "", "createdTime": str(o.created_ms), "tpTriggerBy": "", "positionIdx": "0",
        "timeInForce": o.time_in_force, "leavesValue": num((o.qty - o.cum_qty) * (o.price or o.last_price_on_created)
                                                            if o.is_open else 0),
        "updatedTime": str(o.updated_ms), "side": o.side, "smpGroup": "0",
        "triggerPrice": num(o.trigger_price) if o.trigger_price else "", "tpLimitPrice": "0", "cumExecFee": num(o.cum_fee), "slTriggerBy": "",
        "leavesQty": num(o.qty - o.cum_qty if o.is_open else 0), "closeOnTrigger": False,
        "placeType": "", "cumExecQty": num(o.cum_qty), "reduceOnly": o.reduce_only,
        "qty": num(o.qty), "stopLoss": num(o.stop_loss) if o.stop_loss else "", "smpOrderId": "", "triggerBy": "LastPrice" if o.trigger_price else "",
    }
    if o.category == "spot":  # spot captures (2024-01): isLeverage "0", marketUnit, row cursor
        common.update({"isLeverage": "0", "triggerPrice": "0", "stopLoss": "0", "takeProfit": "0",
                       "marketUnit": o.market_unit, "nextPageCursor": cursor})
        return common
    common.update({"createType": o.create_type, "tpslMode": "",
                   "cumFeeDetail": {"USDT": num(o.cum_fee)} if o.cum_fee else {}})
    if endpoint == "realtime":
        common["marketUnit"] = ""
    else:
        common.update({"slippageToleranceType": "UNKNOWN", "slippageTolerance": "0", "extraFees": ""})
    return common


def execution_row(e: dict, cursor: str) -> dict:
    """One fill (or funding) of /v5/execution/list; `e` holds the emulator's numbers."""
    row = {
        "symbol": e["symbol"], "orderType": e["orderType"], "underlyingPrice": "",
        "orderLinkId": e["orderLinkId"], "orderId": e["orderId"], "stopOrderType": e["stopOrderType"],
        "execTime": str(e["execTime"]), "feeCurrency": e["feeCurrency"], "feeRate": num(e["feeRate"]),
        "tradeIv": "", "blockTradeId": "", "markPrice": num(e["markPrice"]) if e["category"] == "linear" else "",
        "execPrice": num(e["execPrice"]), "markIv": "", "orderQty": num(e["orderQty"]),
        "orderPrice": num(e["orderPrice"]), "execValue": num(e["execValue"]),
        "closedSize": num(e["closedSize"]) if e["category"] == "linear" else "",
        "execType": e["execType"], "seq": str(e["seq"]), "side": e["side"], "indexPrice": "",
        "leavesQty": num(e["leavesQty"]), "isMaker": e["isMaker"], "execFee": num(e["execFee"]),
        "execId": e["execId"], "marketUnit": e.get("marketUnit", ""), "execQty": num(e["execQty"]),
        "nextPageCursor": cursor,
    }
    if e["category"] == "linear":
        row["createType"] = e.get("createType", "CreateByUser")
    return row


def position_row(symbol: str, p, mark: float, now_ms: int) -> dict:
    """One row of /v5/position/list (`p` is a book.Position, possibly flat)."""
    size = abs(p.size)
    value = size * p.entry_price
    upl = p.size * (mark - p.entry_price) if p.size else 0.0
    im = value / p.leverage if size else 0.0
    return {
        "symbol": symbol, "leverage": num(p.leverage), "autoAddMargin": "0",
        "avgPrice": num(p.entry_price if size else 0), "liqPrice": "", "riskLimitValue": "2000000",
        "takeProfit": "", "positionValue": num(value) if size else "", "isReduceOnly": False,
        "tpslMode": "Full", "riskId": "1", "trailingStop": "0",
        "unrealisedPnl": num(upl) if size else "", "markPrice": num(mark), "adlRankIndicator": "2" if size else "0",
        "cumRealisedPnl": num(p.cum_realised), "positionMM": num(value * 0.005), "createdTime": str(p.created_ms),
        "positionIdx": "0", "positionIM": num(im), "seq": str(p.seq), "updatedTime": str(p.updated_ms or now_ms),
        "side": ("Buy" if p.size > 0 else "Sell") if size else "", "bustPrice": "",
        "positionBalance": num(im), "leverageSysUpdatedTime": "", "size": num(size),
        "positionStatus": "Normal", "mmrSysUpdatedTime": "", "stopLoss": num(p.stop_loss) if p.stop_loss else "",
        "tradeMode": "0",
    }


def wallet_coin_row(coin: str, wallet: float, *, locked: float, usd_value: float, upl: float,
                    position_im: float, position_mm: float, order_im: float, cum_realised: float) -> dict:
    equity = wallet + upl
    return {
        "availableToBorrow": "", "bonus": "0", "accruedInterest": "0", "availableToWithdraw": "",
        "totalOrderIM": num(order_im), "equity": num(equity), "totalPositionMM": num(position_mm),
        "usdValue": num(usd_value), "unrealisedPnl": num(upl), "collateralSwitch": True,
        "spotHedgingQty": "0", "borrowAmount": "0.000000000000000000", "totalPositionIM": num(position_im),
        "walletBalance": num(wallet), "cumRealisedPnl": num(cum_realised), "locked": num(locked),
        "marginCollateral": True, "coin": coin,
    }


def wallet_row(coins: list[dict], *, equity: float, wallet: float, im: float, mm: float, upl: float) -> dict:
    return {
        "totalEquity": num(equity), "accountIMRate": num(im / equity if equity else 0),
        "totalMarginBalance": num(equity), "totalInitialMargin": num(im), "accountType": "UNIFIED",
        "totalAvailableBalance": num(equity - im), "accountMMRate": num(mm / equity if equity else 0),
        "totalPerpUPL": num(upl), "totalWalletBalance": num(wallet), "accountLTV": "0",
        "totalMaintenanceMargin": num(mm), "coin": coins,
    }


def ledger_row(r: dict, cursor: str) -> dict:
    """One row of /v5/account/transaction-log."""
    return {
        "symbol": r["symbol"], "side": r["side"], "funding": num(r["funding"]) if r["funding"] else "",
        "orderLinkId": r["orderLinkId"], "orderId": r["orderId"], "fee": num(r["fee"]),
        "change": num(r["change"]), "cashFlow": num(r["cashFlow"]), "transactionTime": str(r["transactionTime"]),
        "type": r["type"], "feeRate": num(r["feeRate"]), "bonusChange": "0", "size": num(r["size"]),
        "qty": num(r["qty"]), "cashBalance": num(r["cashBalance"]), "currency": r["currency"], "id": r["id"],
        "category": r["category"], "tradePrice": num(r["tradePrice"]), "tradeId": r["tradeId"],
        "nextPageCursor": cursor,
    }


def coin_info_row(coin: str, withdraw_enabled: bool, deposit_enabled: bool = True) -> dict:
    chain = {"chainType": f"{coin} chain", "confirmation": "10", "withdrawFee": "1", "depositMin": "0",
             "withdrawMin": "1", "chain": coin, "chainDeposit": "1" if deposit_enabled else "0",
             "chainWithdraw": "1" if withdraw_enabled else "0", "minAccuracy": "8",
             "withdrawPercentageFee": "0", "contractAddress": ""}
    return {"name": coin, "coin": coin, "remainAmount": "50000000", "chains": [chain]}


def linear_ticker_row(symbol: str, last: float, bid: float, ask: float, funding_rate: float,
                      next_funding_ms: int, now_ms: int) -> dict:
    return {
        "symbol": symbol, "lastPrice": num(last), "indexPrice": num(last), "markPrice": num(last),
        "prevPrice24h": num(last), "price24hPcnt": "0", "highPrice24h": num(last), "lowPrice24h": num(last),
        "prevPrice1h": num(last), "openInterest": "1000", "openInterestValue": num(1000 * last),
        "turnover24h": num(100 * last), "volume24h": "100", "fundingRate": num(funding_rate),
        "nextFundingTime": str(next_funding_ms), "predictedDeliveryPrice": "", "basisRate": "",
        "deliveryFeeRate": "", "deliveryTime": "0", "ask1Size": "10", "bid1Price": num(bid),
        "ask1Price": num(ask), "bid1Size": "10", "basis": "", "preOpenPrice": "", "preQty": "",
        "curPreListingPhase": "", "timestamp": now_ms,
    }


def spot_ticker_row(symbol: str, last: float, bid: float, ask: float) -> dict:
    # no spot ticker capture in the fixture: fields of https://bybit-exchange.github.io/docs/v5/market/tickers
    return {
        "symbol": symbol, "bid1Price": num(bid), "bid1Size": "10", "ask1Price": num(ask), "ask1Size": "10",
        "lastPrice": num(last), "prevPrice24h": num(last), "price24hPcnt": "0", "highPrice24h": num(last),
        "lowPrice24h": num(last), "turnover24h": num(100 * last), "volume24h": "100", "usdIndexPrice": num(last),
    }


DEPOSIT_CREDITED, DEPOSIT_FAILED = 3, 4
"""Bybit's deposit status: 0 unknown, 1 to be confirmed, 2 processing, 3 success (the one final state
of a credited deposit), 4 failed; 10011/10012: on the way to / credited to the funding pool."""


def deposit_row(deposit_id: str, coin: str, amount: float, status: int, success_ms: int, tx_id: str) -> dict:
    """One row of /v5/asset/deposit/query-record. The fixture has no capture of it: the key set of
    Bybit's V5 documentation (Get Deposit Record (on-chain); `id` is Bybit's unique deposit id)."""
    return {
        "id": deposit_id, "coin": coin, "chain": "ETH" if coin == "USDT" else coin, "amount": num(amount),
        "txID": tx_id if status != DEPOSIT_FAILED else "", "status": status, "toAddress": "0xemulator",
        "tag": "", "depositFee": "", "successAt": str(success_ms), "confirmations": "64", "txIndex": "0",
        "blockHash": "0xemulatorblock", "batchReleaseLimit": "-1", "depositType": "0", "fromAddress": "",
        "taxDepositRecordsId": "0", "taxStatus": 0,
    }
