"""Public market endpoints beyond tests/bybit_stub.py, priced from the emulator's set prices."""
from __future__ import annotations

from . import rows
from .book import Reject

EIGHT_HOURS_MS = 8 * 3600 * 1000


def _symbols(emu, category: str, params: dict) -> list[str]:
    if category not in ("spot", "linear"):
        if category in ("inverse", "option"):
            return []
        raise Reject(10001, f"Illegal category {category!r}")
    listed = [s for (c, s) in emu.prices if c == category]
    if "symbol" in params:
        if params["symbol"] not in listed:
            raise Reject(10001, "Not supported symbols")
        return [params["symbol"]]
    return listed


def tickers(emu, params: dict) -> dict:
    category = params.get("category")
    out = []
    now = emu.now_ms()
    for symbol in _symbols(emu, category, params):
        bid, ask, last = emu.quote(category, symbol)
        if category == "spot":
            out.append(rows.spot_ticker_row(symbol, last, bid, ask))
        else:
            next_funding = (now // EIGHT_HOURS_MS + 1) * EIGHT_HOURS_MS
            out.append(rows.linear_ticker_row(symbol, last, bid, ask, emu.funding_rates.get(symbol, 0.0001),
                                              next_funding, now))
    return {"category": category, "list": out}


def orderbook(emu, params: dict) -> dict:
    category = params.get("category")
    [symbol] = _symbols(emu, category, {"symbol": params.get("symbol")})
    bid, ask, _ = emu.quote(category, symbol)
    now = emu.now_ms()
    out = {"s": symbol, "b": [[rows.num(bid), "10"]], "a": [[rows.num(ask), "10"]], "ts": str(now), "u": "1"}
    if category == "linear":
        out["seq"] = "1"
    return out


def recent_trades(emu, params: dict) -> dict:
    category = params.get("category")
    [symbol] = _symbols(emu, category, {"symbol": params.get("symbol")})
    _, _, last = emu.quote(category, symbol)
    return {"category": category, "list": [{"execId": "emulator-1", "symbol": symbol, "price": rows.num(last),
                                            "size": "0.001", "side": "Buy", "time": str(emu.now_ms()),
                                            "isBlockTrade": False}]}


def open_interest(emu, params: dict) -> dict:
    category = params.get("category")
    [symbol] = _symbols(emu, category, {"symbol": params.get("symbol")})
    return {"symbol": symbol, "category": category, "nextPageCursor": "",
            "list": [{"openInterest": "1000", "timestamp": str(emu.now_ms())}]}


PUBLIC_ROUTES = {
    "/v5/market/tickers": tickers,
    "/v5/market/orderbook": orderbook,
    "/v5/market/recent-trade": recent_trades,
    "/v5/market/open-interest": open_interest,
}
