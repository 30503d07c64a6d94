"""A Bybit V5 emulator for tests: the real ccxt `bybit` client trades against 127.0.0.1.

    with BybitEmulator() as emu:
        emu.add_account("key", "secret", usdt=100_000.0)
        emu.set_price("BTCUSDT", 44179.55)                    # spot and linear
        ex = emu.client("key", "secret")                      # ccxt.bybit pointed at the emulator
        ex.create_order("BTC/USDT", "market", "buy", 0.01)
        emu.fault("/v5/order/create", drop_after_accept=True)  # order made, no answer

Public data is `tests/bybit_stub.py` (instruments, time, kline, funding history) plus tickers,
order book, recent trades, open interest. Private endpoints check ccxt's V5 HMAC-SHA256 signature
and keep one Unified account per key (see `book.py`); response rows have the key sets of real
captures (see `rows.py`). Every request is in `requests`/`counts`; unknown paths in `unknown`.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from tests import bybit_stub
from tests.bybit_stub import BybitStub

from . import book, rows
from .book import Account, Order, Reject
from .private import PRIVATE_ROUTES
from .public import PUBLIC_ROUTES

ROUTES = {**bybit_stub._ROUTES, **PUBLIC_ROUTES}


class BybitEmulator(BybitStub):
    """Bybit V5 public + private REST for Unified accounts, on 127.0.0.1:<free port>."""

    def __init__(self, now=None, bases: tuple[str, ...] = ("BTC", "ETH", "SOL"), spread: float = 0.0):
        super().__init__(now=now, bases=bases)
        self.spread = spread                  # relative bid/ask spread around the set price
        self.prices: dict[tuple[str, str], float] = {}
        self.funding_rates: dict[str, float] = {}
        self.accounts: dict[str, Account] = {}
        self.withdraw_suspended: set[str] = set()
        self.coins: list[str] = ["USDT", *bases]
        self.recv_clock_offset_ms = 0         # shifts the server clock used to check X-BAPI-TIMESTAMP
        self.partial_fill_fraction: float | None = None
        self.partial_fill_rest_after_s: float | None = None
        self._rest_fills: list[tuple[float, Account, Order]] = []   # (due, monotonic) rests of partial fills
        self.state = threading.RLock()
        self._emu_faults: list[dict] = []
        self.last_responses: dict[str, dict] = {}   # path -> the last JSON body served
        self.clock_offset_ms: int | None = None     # set_clock: the venue's time minus the real time

    # accounts and market state ---------------------------------------------------------------
    def add_account(self, api_key: str, secret: str, usdt: float = 100_000.0, master: bool = False,
                    **coins: float) -> Account:
        """A Unified account under its own UID (a sub-account; `master`: the master UID, whose key
        makes universal transfers between any two of them)."""
        with self.state:
            acct = Account(api_key, secret, uid=100_000 + len(self.accounts), is_master=master)
            acct.balances = {"USDT": float(usdt), **{c: float(v) for c, v in coins.items()}}
            self.accounts[api_key] = acct
            return acct

    def account(self, api_key: str) -> Account:
        return self.accounts[api_key]

    def set_clock(self, ts) -> None:
        """The venue's clock reads `ts` (an aware datetime) now and runs on at real speed from there:
        a walk through history stamps fills, settlements and transfers when they happen in it, as a
        real venue stamps them at the time it does them. It never goes back: an earlier `ts` than
        the clock reads leaves it where it is (the first call sets it from the real clock)."""
        ms = int(ts.timestamp() * 1000)
        if self.clock_offset_ms is None or ms > self.now_ms():
            self.clock_offset_ms = ms - int(time.time() * 1000)

    def now_ms(self) -> int:
        if self.clock_offset_ms is None:
            return super().now_ms()
        return int(time.time() * 1000) + self.clock_offset_ms

    def set_price(self, symbol: str, price: float, category: str | None = None) -> None:
        """The current price of `symbol` ("BTCUSDT"); None sets spot and linear. Resting limit
        orders and stop losses it crosses fill."""
        with self.state:
            for cat in ([category] if category else ["spot", "linear"]):
                before = self.prices.get((cat, symbol))
                self.prices[(cat, symbol)] = float(price)
                self._match(cat, symbol, before)

    def set_prices_from_candles(self, day, data_dir: Path | str = "/work/shared/data", column: str = "close") -> dict:
        """Set every symbol's price from the daily candle of `day` (a date/Timestamp) of the data dir."""
        import pandas as pd

        from eternal.data.csv_files import read_dir

        data = read_dir(Path(data_dir))
        stamp = pd.Timestamp(day)
        stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp
        done = {}
        for (sym, tf), df in data.candles.items():
            if tf != "1d" or stamp not in df.index:
                continue
            category = "linear" if ":" in sym else "spot"
            venue = sym.split(":")[0].replace("/", "")
            self.set_price(venue, float(df.loc[stamp, column]), category)
            done[(category, venue)] = float(df.loc[stamp, column])
        return done

    def quote(self, category: str, symbol: str) -> tuple[float, float, float]:
        """(bid, ask, last) of a symbol; a price must have been set."""
        last = self.prices.get((category, symbol))
        if last is None:
            raise Reject(10001, f"emulator: no price set for {category} {symbol}")
        half = last * self.spread / 2
        return last - half, last + half, last

    def set_funding_rate(self, symbol: str, rate: float) -> None:
        self.funding_rates[symbol] = rate

    def settle_funding(self, symbol: str, rate: float) -> list[dict]:
        """Pay/charge funding on every account's `symbol` perp at the mark price (= set price)."""
        with self.state:
            mark = self.quote("linear", symbol)[2]
            self.funding_rates[symbol] = rate
            out = [book.settle_funding(a, symbol, rate, mark, self.now_ms()) for a in self.accounts.values()]
            return [r for r in out if r]

    def suspend_withdrawals(self, coin: str, suspended: bool = True) -> None:
        (self.withdraw_suspended.add if suspended else self.withdraw_suspended.discard)(coin)

    def add_deposit(self, api_key: str, coin: str, amount: float, to_unified: bool = True) -> dict:
        """A confirmed deposit (credited to the Unified wallet unless to_unified=False: the Funding one)."""
        return self.deposit(api_key, amount, coin=coin, wallet="UNIFIED" if to_unified else "FUND")

    def deposit(self, api_key: str, usdt: float, deposit_id: str | None = None, ts=None, *, coin: str = "USDT",
                status: int = rows.DEPOSIT_CREDITED, wallet: str = "FUND") -> dict:
        """An on-chain deposit of `usdt` (of `coin`) to the account of `api_key`, recorded under Bybit's
        deposit id (`deposit_id`, default a new one) at `ts` (a datetime or ISO text; default now).
        Credited (status 3) it lands in the Funding wallet, as Bybit credits deposits by default
        (`wallet`="UNIFIED": the Unified one); 1/2 pending and 4 failed credit nothing."""
        with self.state:
            acct = self.accounts[api_key]
            row = rows.deposit_row(deposit_id or book.new_id("d"), coin, usdt, status, self._ms(ts),
                                   book.new_id("0xtx"))
            row["_wallet"] = wallet
            acct.deposits.append(row)
            if status == rows.DEPOSIT_CREDITED:
                self._credit(acct, row)
            return {k: v for k, v in row.items() if not k.startswith("_")}

    def set_deposit_status(self, api_key: str, deposit_id: str, status: int, ts=None) -> None:
        """A recorded deposit moves on (pending -> credited or failed); `successAt` is its last update."""
        with self.state:
            row = next(d for d in self.accounts[api_key].deposits if d["id"] == deposit_id)
            was, row["status"], row["successAt"] = row["status"], status, str(self._ms(ts))
            if status == rows.DEPOSIT_CREDITED and was != rows.DEPOSIT_CREDITED:
                self._credit(self.accounts[api_key], row)

    def _credit(self, acct: Account, row: dict) -> None:
        wallet = acct.balances if row["_wallet"] == "UNIFIED" else acct.fund
        wallet[row["coin"]] = wallet.get(row["coin"], 0.0) + float(row["amount"])

    def _ms(self, ts) -> int:
        if ts is None:
            return self.now_ms()
        import pandas as pd

        stamp = pd.Timestamp(ts)
        return int((stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp).timestamp() * 1000)

    def partial_fill_next(self, fraction: float = 0.5, rest_after_s: float | None = None) -> None:
        """The next market order fills only `fraction` of its quantity; the rest stays open
        (PartiallyFilled), for good when `rest_after_s` is None, else it fills `rest_after_s` seconds
        later (at the price then, seen by the first signed request after that time)."""
        self.partial_fill_fraction, self.partial_fill_rest_after_s = fraction, rest_after_s

    def _fill_rests(self) -> None:
        """Fill the rests of partial fills that are due (and still open: not cancelled meanwhile)."""
        now = time.monotonic()
        due = [r for r in self._rest_fills if r[0] <= now]
        self._rest_fills = [r for r in self._rest_fills if r[0] > now]
        for _, acct, o in due:
            if o.is_open:
                bid, ask, last = self.quote(o.category, o.symbol)
                book.fill(acct, o, o.qty - o.cum_qty, ask if o.side == "Buy" else bid, maker=False, mark=last,
                          now_ms=self.now_ms())

    def fault(self, path: str, *, status: int | None = None, body: str | None = None, delay_s: float = 0.0,
              drop_after_accept: bool = False, ret_code: int | None = None, times: int | None = 1) -> None:
        """The next `times` requests to `path` (prefix; None = always) misbehave: wait `delay_s`,
        then answer HTTP `status` (an HTML body), a 200 with `body`, a 200 with Bybit `ret_code`,
        or process the request and close the connection without an answer (`drop_after_accept`)."""
        with self._lock:
            self._emu_faults.append({"path": path, "status": status, "body": body, "delay_s": delay_s,
                                     "drop": drop_after_accept, "ret_code": ret_code, "times": times})

    def last_response(self, path: str) -> dict:
        """The JSON body last served for `path` (e.g. the answer to an order create)."""
        return self.last_responses[path]

    def clear_faults(self) -> None:
        super().clear_faults()
        with self._lock:
            self._emu_faults.clear()

    def client(self, api_key: str, secret: str, default_type: str = "spot", **options):
        """A ccxt.bybit client pointed at this emulator (rate limiting off)."""
        import ccxt

        ex = ccxt.bybit({"apiKey": api_key, "secret": secret, "enableRateLimit": False,
                         "options": {"defaultType": default_type, **options}})
        point_at(ex, self.url)
        return ex

    # matching ----------------------------------------------------------------------------------
    def _match(self, category: str, symbol: str, before: float | None = None) -> None:
        """Resting limits the price crosses fill at their limit; a position's stop loss the price
        reached triggers at the stop when the price came through it from `before` (a move from one
        set price to the next stands for a path through every price between), at the price where
        it is otherwise, and fills at market (the bid or the ask around that price)."""
        bid, ask, last = self.quote(category, symbol)
        now = self.now_ms()
        for acct in self.accounts.values():
            for o in list(acct.orders.values()):
                if o.status == "Untriggered" and o.category == category and o.symbol == symbol and (
                        (o.trigger_direction == 2 and last <= o.trigger_price)
                        or (o.trigger_direction == 1 and last >= o.trigger_price)):
                    self._trigger(acct, o, bid, ask, last, now)
                    continue
                if not (o.is_open and o.order_type == "Limit" and o.category == category and o.symbol == symbol):
                    continue
                if (o.side == "Buy" and ask <= o.price) or (o.side == "Sell" and bid >= o.price):
                    book.fill(acct, o, o.qty - o.cum_qty, o.price, maker=True, mark=last, now_ms=now)
            p = acct.positions.get(symbol)
            if category == "linear" and p and p.size and p.stop_loss:
                if (p.size > 0 and last <= p.stop_loss) or (p.size < 0 and last >= p.stop_loss):
                    crossed = before is not None and ((before > p.stop_loss) if p.size > 0 else (before < p.stop_loss))
                    at = p.stop_loss if crossed else last
                    half = at * self.spread / 2
                    o = self._new_order(acct, {"category": "linear", "symbol": symbol, "orderType": "Market",
                                               "side": "Sell" if p.size > 0 else "Buy", "qty": str(abs(p.size)),
                                               "reduceOnly": True})
                    o.stop_order_type, o.create_type = "StopLoss", "CreateByStopLoss"
                    book.fill(acct, o, o.qty, at - half if p.size > 0 else at + half, maker=False, mark=last,
                              now_ms=now)

    def _trigger(self, acct: Account, o: Order, bid: float, ask: float, last: float, now: int) -> None:
        """A conditional order whose trigger the price reached: its order is placed now (a market
        one fills at the bid or ask; funds and reduce-only are checked as at a send)."""
        from .private import _check_funds

        o.status, o.create_type, o.updated_ms = "Triggered", "CreateByStopOrder", now
        try:
            _check_funds(self, acct, o, bid, ask)
        except Reject as exc:
            o.status, o.reject_reason = "Rejected", f"EC_{exc.code}"
            return
        if o.order_type == "Market":
            book.fill(acct, o, o.qty, ask if o.side == "Buy" else bid, maker=False, mark=last, now_ms=now)
        else:
            o.status = "New"

    def _new_order(self, acct: Account, p: dict) -> Order:
        category, symbol = p.get("category"), p.get("symbol")
        bid, ask, last = self.quote(category, symbol)
        try:
            qty = float(p.get("qty"))
            price = float(p["price"]) if p.get("price") not in (None, "") else None
        except (TypeError, ValueError):
            raise Reject(10001, f"params error: qty {p.get('qty')!r} / price {p.get('price')!r}") from None
        order_type, side = p.get("orderType"), p.get("side")
        if order_type not in ("Market", "Limit") or side not in ("Buy", "Sell") or qty <= 0:
            raise Reject(10001, f"params error: orderType {order_type!r} side {side!r} qty {qty}")
        if order_type == "Limit" and not price:
            raise Reject(10001, "params error: a Limit order needs a price")
        stop_loss = None
        if p.get("stopLoss") not in (None, "", "0"):
            try:
                stop_loss = float(p["stopLoss"])
            except (TypeError, ValueError):
                raise Reject(10001, f"params error: stopLoss {p.get('stopLoss')!r}") from None
            if category != "linear":
                raise Reject(10001, "emulator: spot TP/SL orders are not emulated")
            if (side == "Buy" and stop_loss >= last) or (side == "Sell" and stop_loss <= last):
                raise Reject(10001, f"StopLoss:{stop_loss} set for {side} position should "
                             f"{'lower' if side == 'Buy' else 'higher'} than base_price:{last}??LastPrice")
        unit = ""
        if category == "spot" and order_type == "Market":
            unit = p.get("marketUnit") or ("quoteCoin" if side == "Buy" else "baseCoin")
            if unit == "quoteCoin":
                qty = qty / (ask if side == "Buy" else bid)
        now = self.now_ms()
        tif = p.get("timeInForce") or ("IOC" if order_type == "Market" else "GTC")
        o = Order(order_id=book.new_id(), link_id=p.get("orderLinkId") or "", category=category, symbol=symbol,
                  side=side, order_type=order_type, qty=qty, price=price, time_in_force=tif,
                  reduce_only=p.get("reduceOnly") in (True, "true", "True", 1, "1"), created_ms=now,
                  last_price_on_created=last, market_unit=unit, updated_ms=now, stop_loss=stop_loss)
        acct.orders[o.order_id] = o
        if o.link_id:
            acct.link_ids.add(o.link_id)
        return o

    # serving -----------------------------------------------------------------------------------
    def _take_fault(self, path: str) -> dict | None:
        with self._lock:
            for f in self._emu_faults:
                if path.startswith(f["path"]) and f["times"] != 0:
                    if f["times"] is not None:
                        f["times"] -= 1
                    return f
        return None

    def authenticate(self, headers, payload: str) -> Account:
        key = headers.get("X-BAPI-API-KEY")
        ts, sign = headers.get("X-BAPI-TIMESTAMP"), headers.get("X-BAPI-SIGN")
        window = headers.get("X-BAPI-RECV-WINDOW") or "5000"
        acct = self.accounts.get(key or "")
        if acct is None:
            raise Reject(10003, "API key is invalid.")
        if not ts or not sign:
            raise Reject(10004, "Error sign, please check your signature generation algorithm.")
        server_ms = int(time.time() * 1000) + self.recv_clock_offset_ms
        if not (server_ms - int(window) <= int(ts) < server_ms + 1000):
            raise Reject(10002, f"invalid request, please check your server timestamp or recv_window param. "
                                f"req_timestamp[{ts}],server_timestamp[{server_ms}],recv_window[{window}]")
        expected = hmac.new(acct.secret.encode(), f"{ts}{key}{window}{payload}".encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, sign):
            raise Reject(10004, "Error sign, please check your signature generation algorithm.")
        return acct

    def dispatch(self, method: str, path: str, params: dict, headers, payload: str) -> tuple[int, dict]:
        if path in PRIVATE_ROUTES:
            try:
                acct = self.authenticate(headers, payload)
                with self.state:
                    self._fill_rests()
                    return 200, self._ok(PRIVATE_ROUTES[path](self, acct, params))
            except Reject as exc:
                return 200, self._error(exc.code, exc.msg)
        if path in ROUTES and method == "GET":
            try:
                return 200, self._ok(ROUTES[path](self, params))
            except bybit_stub._BadRequest as exc:
                return 200, self._error(10001, str(exc))
            except Reject as exc:
                return 200, self._error(exc.code, exc.msg)
        return 404, self._error(10404, f"emulator: unknown {method} {path}")


def point_at(exchange, base_url: str) -> None:
    """Every API host of a ccxt exchange -> `base_url` (as eternal.data.download does)."""
    for section in ("api", "test", "demotrading"):
        urls = exchange.urls.get(section)
        if isinstance(urls, dict):
            for key in urls:
                urls[key] = base_url.rstrip("/")


class ThreadingHTTPServerNoDelay(bybit_stub.ThreadingHTTPServer):
    def get_request(self):
        conn, addr = super().get_request()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, addr


class _EmuHandler(bybit_stub._Handler):
    server_version = "bybit-emulator"

    def _serve(self) -> None:
        emu: BybitEmulator = self.server.stub  # type: ignore[attr-defined]
        parts = urlsplit(self.path)
        raw_body = ""
        if self.command == "POST" and int(self.headers.get("Content-Length") or 0):
            raw_body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        try:
            params = json.loads(raw_body) if raw_body else dict(parse_qsl(parts.query, keep_blank_values=True))
        except json.JSONDecodeError:
            return self._send(200, json.dumps(emu._error(10001, "emulator: body is not JSON")))
        known = (parts.path in PRIVATE_ROUTES) or (parts.path in ROUTES and self.command == "GET")
        stub_fault = emu._record(parts.path, params, known)
        if stub_fault is not None:  # BybitStub.fail()
            if stub_fault["mode"] == "close":
                return self._drop()
            if stub_fault["mode"] == "error":
                return self._send(200, json.dumps(emu._error(stub_fault["ret_code"], "System error.")))
            return self._send(int(stub_fault["mode"]), "<html><body>fault</body></html>", "text/html")
        fault = emu._take_fault(parts.path)
        if fault is not None:
            if fault["delay_s"]:
                time.sleep(fault["delay_s"])
            if fault["status"]:
                return self._send(fault["status"], f"<html><body><h1>{fault['status']}</h1></body></html>",
                                  "text/html")
            if fault["body"] is not None:
                return self._send(200, fault["body"], "text/html")
            if fault["ret_code"]:
                msg = "Too many visits!" if fault["ret_code"] == 10006 else "emulator fault"
                return self._send(200, json.dumps(emu._error(fault["ret_code"], msg)))
        payload = raw_body if self.command == "POST" else parts.query
        status, body = emu.dispatch(self.command, parts.path, params, self.headers, payload)
        emu.last_responses[parts.path] = body
        if fault is not None and fault["drop"]:
            return self._drop()
        self._send(status, json.dumps(body, separators=(",", ":")))

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


BybitEmulator.server_class = ThreadingHTTPServerNoDelay      # served by BybitStub.start
BybitEmulator.handler_class = _EmuHandler
