"""Bybit through ccxt: the Exchange port for the demo, testnet and live modes (issue 13).

A sleeve with a key pair of its own (`ETERNAL_BYBIT__KEYS__CORE__API_KEY`, ...) trades in its own
Unified Trading Account: its books at the venue are that account's wallet and positions, compared
one to one. Sleeves without one (or sharing one key) are virtual ledgers on one account (the main
one, `ETERNAL_BYBIT__KEYS__MAIN__*`): the venue holds their sum. Their orders are told apart by the
sleeve code that starts every client order id; their perps net in one one-way position, so their
orders are never reduce-only (a sleeve's exit may cross another's position) and each sleeve's stop
is a conditional market order of its own (`orderLinkId` `<code>stop<h|t>-...`, sized by the
sleeve's position as our ledger holds it and by the fills since) instead of the position's
trading-stop; a funding settlement of the net position is split by the ledger's positions
(journal kind "account_funding"); money between two of them moves in our ledger only; and
reconciliation compares the account with the sum of its sleeves (`account_books`). Every order carries
`orderLinkId` = our client order id. An uncertain outcome of a send (timeout, connection reset,
5xx, an HTTP 200 whose body is not JSON, Bybit's reused-id rejection 110072/170141, which ccxt
raises as InvalidOrder) is resolved by `orderLinkId` before anything is sent again: the order
found is returned, an order not found raises ExchangeError for the caller's retry, which looks it
up again first (`eternal.execution.execute`). Requests per order: a plan the run has just stored
is sent without a lookup (no earlier run can have sent its ids), so a market order costs two (the
create, a read back in the order history), a plan recovered after a crash four (two lookups first).

ccxt quirks this relies on (measured against ccxt 4.5): an order is looked up by client id with
`fetch_open_orders(symbol, params={'orderLinkId': id})`, then the order history; cancelling by
client id needs `{'orderLinkId': id}`; `fetch_order` on a unified account needs
`{'acknowledged': True}`; a 200 with a body that is not JSON raises nothing and returns an order
whose id is None.

Money comes in at the main (master) account, `ETERNAL_BYBIT__KEYS__MAIN__*`: `deposits_since` reads
its on-chain deposit records (credited ones only), and every universal transfer, sleeve to sleeve
or a deposit's share from the main account to a sleeve, is made with its key, as Bybit requires.

The account journal (fills and funding) is read from the execution list and the transaction log;
an entry's number is its time in ms x 1000 plus its rank within that ms, so `journal_since(seq)`
needs no state of ours between runs.
"""
from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from eternal.errors import ConfigError, DuplicateOrder, ExchangeError, InsufficientFunds
from eternal.exchange.base import ExchangeOrder, OrderRefused
from eternal.execution import SLEEVE_CODES
from eternal.models import (
    QUOTE,
    Fill,
    FundingPayment,
    Market,
    OrderIntent,
    OrderStatus,
    OrderType,
    PerpPosition,
    Quote,
    Side,
    Sleeve,
    SleeveBook,
    StopLevel,
    Transfer,
    utc,
)

REUSED_ID_CODES = ("110072", "170141")
TRIGGER_PASSED_CODES = ("110092", "110093")    # a conditional order whose trigger the price already passed
STOP_TAG = "stop"
"""A virtual sleeve's stop order: `orderLinkId` = sleeve code + 'stop' + reason letter + '-' + hex."""
STOP_REASONS = {"h": "hard_stop", "t": "trailing_stop"}
MAX_SLIPPAGE = 0.005            # spec 8.1: no urgent order when the best price is 0.5 % off the decision's
SLEEVE_OF_CODE = {code: sleeve for sleeve, code in SLEEVE_CODES.items()}
CATEGORIES = {Sleeve.CORE: ("spot",), Sleeve.TACTICAL: ("spot",), Sleeve.TREND_1: ("linear",),
              Sleeve.TREND_2: ("linear",), Sleeve.FUNDING: ("spot", "linear")}
"""What each sleeve trades (spec: CORE and TACTICAL spot, TREND perps, FUNDING both)."""
MARKETS_TTL_S = 3600.0
"""A process re-reads Bybit's markets (instruments-info, every category) at most hourly."""
_MARKETS: dict[str, tuple[float, dict, dict, dict]] = {}
HISTORY_SPAN_MS = 7 * 86_400_000
"""Bybit's execution list and transaction log answer at most 7 days per request."""
JOURNAL_LOOKBACK_MS = 10 * 60_000
"""`journal_and_late` reads the fills of the 10 minutes before its cursor again: Bybit's execution
list shows an execution a moment after it happened, so one may appear after a later one was booked."""
DEPOSIT_WINDOW_MS = 30 * 86_400_000 - 1000
"""Bybit reads deposit records over at most 30 days per request."""
DEPOSIT_PAGE = 50


@dataclass(frozen=True)
class VenueDeposit:
    """A deposit credited at Bybit: its id (Bybit's unique deposit id), when, the coin, how much."""

    deposit_id: str
    ts: datetime
    coin: str
    amount: float


STATUS = {"open": OrderStatus.OPEN, "closed": OrderStatus.FILLED, "canceled": OrderStatus.CANCELLED,
          "cancelled": OrderStatus.CANCELLED, "rejected": OrderStatus.REJECTED, "expired": OrderStatus.CANCELLED}


def make_client(api_key: str, api_secret: str, *, mode: str, url: str | None = None,
                rate_limit_ms: float | None = None, timeout_s: float = 10.0):
    """A ccxt `bybit` client for `mode` ('live', 'testnet': sandbox, 'demo': Bybit demo trading,
    which has its own keys), its rate limiter on (`rate_limit_ms`: ms per cost unit instead of
    ccxt's 20), `timeout_s` per request. `url`: every API host replaced (an emulator)."""
    import ccxt

    config: dict[str, Any] = {"apiKey": api_key, "secret": api_secret, "enableRateLimit": True,
                              "timeout": int(timeout_s * 1000),
                              "options": {"defaultType": "spot", "recvWindow": 5000}}
    if rate_limit_ms is not None:
        config["rateLimit"] = rate_limit_ms
    client = ccxt.bybit(config)
    if mode == "testnet":
        client.set_sandbox_mode(True)
    elif mode == "demo":
        client.enable_demo_trading(True)
    if url:
        url = url.rstrip("/")
        for table in ("api", "test", "demotrading"):
            hosts = client.urls.get(table)
            if isinstance(hosts, dict):
                client.urls[table] = {k: url for k in hosts}
    return client


def _category(symbol: str) -> str:
    return "linear" if symbol.endswith(":USDT") else "spot"


def _id_order(entry_id: str) -> tuple[str, int, str]:
    """A journal entry's id in the order Bybit made them: its digits as a number (after any
    letters), so "e10" follows "e9"; other ids as text."""
    head = entry_id.rstrip("0123456789")
    digits = entry_id[len(head):]
    return (head, len(digits), digits)


def _uncertain(exc: Exception) -> bool:
    """An outcome after which the order may or may not exist at the venue."""
    import ccxt

    if isinstance(exc, ccxt.InvalidOrder) and any(code in str(exc) for code in REUSED_ID_CODES):
        return True
    return isinstance(exc, (ccxt.NetworkError, ccxt.ExchangeNotAvailable, ccxt.RequestTimeout,
                            ccxt.BadResponse))


class BybitExchange:
    """The Exchange port on Bybit: one ccxt client (one sub-account) per sleeve."""

    name = "bybit"
    immediate_market_orders = True     # a market order's rest still open is a leftover (Driver.sync)

    def __init__(self, clients: Mapping[Sleeve, Any], *, max_slippage: float = MAX_SLIPPAGE,
                 on_transfer_account: Mapping[Sleeve, str] | None = None, main: Any | None = None,
                 main_member_id: str | None = None, deposit_wallet: str = "FUND",
                 backoff_s: tuple[float, ...] = (0.25, 1.0, 4.0),
                 partial_fill_timeout_s: float = 10.0, partial_fill_poll_s: float = 0.5):
        self.clients = dict(clients)
        self.backoff_s = backoff_s
        self.partial_fill_timeout_s, self.partial_fill_poll_s = partial_fill_timeout_s, partial_fill_poll_s
        self.max_slippage = max_slippage
        self.decision_prices: dict[str, float] = {}
        self.stops: dict[tuple[Sleeve, str], StopLevel] = {}
        self.leverage: dict[tuple[Sleeve, str], float] = {}
        # virtual sleeves: (sleeve, perp symbol) -> signed qty, as the ledger held it when the run began
        # acting (`use_ledger`) plus the fills of the orders sent since: what each stop order covers
        self.positions: dict[tuple[Sleeve, str], float] = {}
        # sleeve (None: the main account) -> its UID for universal transfers; read from its key when not set
        self.member_ids: dict[Sleeve | None, str] = {**(on_transfer_account or {}),
                                                     **({None: main_member_id} if main_member_id else {})}
        self.main, self.deposit_wallet = main, deposit_wallet   # the master account's client; where deposits land
        self._markets_loaded: set[Sleeve] = set()

    # plumbing ----------------------------------------------------------------------------------
    def _client(self, sleeve: Sleeve):
        try:
            client = self.clients[sleeve]
        except KeyError:
            raise ExchangeError(f"no Bybit account configured for sleeve {sleeve} "
                                f"(ETERNAL_BYBIT__KEYS__{sleeve.weight_field.upper()}__API_KEY)") from None
        if sleeve not in self._markets_loaded:
            loaded = next((self.clients[s] for s in self._markets_loaded), None)
            if loaded is not None:              # the same markets for every sub-account: read once
                client.set_markets(loaded.markets, loaded.currencies)
                client.options.update({k: v for k, v in loaded.options.items() if k.startswith("enableUnified")})
            elif (cached := _MARKETS.get(client.urls["api"]["public"])) and time.monotonic() - cached[0] < MARKETS_TTL_S:
                client.set_markets(cached[1], cached[2])     # read by an earlier run of this process
                client.options.update(cached[3])
            else:
                self._call(client.load_markets, f"{sleeve}: load markets")
                _MARKETS[client.urls["api"]["public"]] = (
                    time.monotonic(), client.markets, client.currencies,
                    {k: v for k, v in client.options.items() if k.startswith("enableUnified")})
            self._markets_loaded.add(sleeve)
        return client

    def accounts(self) -> list[tuple[Any, tuple[Sleeve, ...]]]:
        """Each Bybit account we trade in (its client) with the sleeves it holds, in sleeve order."""
        out: dict[int, tuple[Any, list[Sleeve]]] = {}
        for sleeve, client in self.clients.items():
            out.setdefault(id(client), (client, []))[1].append(sleeve)
        return [(client, tuple(sleeves)) for client, sleeves in out.values()]

    def shared(self, sleeve: Sleeve) -> bool:
        """The sleeve is a virtual ledger on an account that holds other sleeves too."""
        client = self.clients.get(sleeve)
        return client is not None and sum(c is client for c in self.clients.values()) > 1

    def use_ledger(self, positions: Mapping[tuple[Sleeve, str], float],
                   stops: Mapping[tuple[Sleeve, str], StopLevel]) -> None:
        """Our ledger's perp positions (signed qty) and stop levels before a plan is acted on: what
        a virtual sleeve's stop order covers (see the module's docstring)."""
        self.positions = {k: q for k, q in positions.items() if self.shared(k[0])}
        for key, level in stops.items():
            if self.shared(key[0]):
                self.stops.setdefault(key, level)

    def _call(self, fn: Callable, doing: str, *args, **kwargs):
        """A read (idempotent) with backoff: a network error, a 5xx or Bybit's rate limit (429,
        10006) is tried again after `backoff_s`, then raised as ExchangeError for the run's retry."""
        import ccxt

        for wait in (*self.backoff_s, None):
            try:
                return fn(*args, **kwargs)
            except (ccxt.NetworkError, ccxt.ExchangeNotAvailable) as exc:
                if wait is None or isinstance(exc, ccxt.AuthenticationError):
                    return self._raise(doing, exc)
                time.sleep(wait)
            except ccxt.BaseError as exc:
                return self._raise(doing, exc)

    @staticmethod
    def _raise(doing: str, exc: Exception):
        import ccxt

        try:
            raise exc
        except ccxt.AuthenticationError as exc:   # a setting to fix, not a failure a retry could fix
            raise ConfigError(f"{doing}: Bybit refused the API key ({type(exc).__name__}); check the "
                              "key pair of this sleeve (ETERNAL_BYBIT__KEYS__*) and its permissions") from None
        except ccxt.InsufficientFunds as exc:
            raise InsufficientFunds(f"{doing}: {exc}") from None
        except ccxt.BaseError as exc:
            raise ExchangeError(f"{doing}: {type(exc).__name__}: {str(exc)[:300]}") from None

    def use_decision_prices(self, prices: Mapping[str, float]) -> None:
        """The prices the coming orders were decided at (symbol -> price): the slippage guard's base."""
        self.decision_prices = dict(prices)

    # orders ------------------------------------------------------------------------------------
    def place_order(self, client_order_id: str, intent: OrderIntent, now: datetime) -> ExchangeOrder:
        """Send one order (`_send`); an urgent one that comes back open is followed (`_follow`)."""
        order = self._follow(self._send(client_order_id, intent), intent)
        if intent.market == Market.PERP and self.shared(intent.sleeve) and order.filled_qty:
            key = (intent.sleeve, intent.symbol)
            sign = 1.0 if intent.side == Side.BUY else -1.0
            self.positions[key] = self.positions.get(key, 0.0) + sign * order.filled_qty
            self._sync_stop(*key)            # the stop order follows the sleeve's position
        return order

    def _follow(self, order: ExchangeOrder, intent: OrderIntent) -> ExchangeOrder:
        """An urgent (market) order still open after the send, filled partly or not yet: looked up
        by its client id every `partial_fill_poll_s` until it is final or `partial_fill_timeout_s`
        has passed, then its remainder is cancelled. Returned final: FILLED, or CANCELLED with the
        qty that did fill (its fills reach our books once, through the journal). The remainder is
        planned again by its engine at its next decision, from the position the sleeve holds.
        CORE's post-only limits are not followed: they rest by design."""
        if order.status.is_final or intent.order_type != OrderType.MARKET or intent.post_only:
            return order
        cid = order.client_order_id
        deadline = time.monotonic() + self.partial_fill_timeout_s
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(self.partial_fill_poll_s, left))
            try:
                order = self.fetch_order(cid, intent.sleeve, intent.symbol) or order
            except ExchangeError:        # a look that failed after its retries: look again
                continue
            if order.status.is_final:
                return order
        try:
            cancelled = self.cancel_order(cid, intent.sleeve, "partial fill timeout")
        except ExchangeError:            # e.g. it filled between the last look and the cancel
            cancelled = self.fetch_order(cid, intent.sleeve, intent.symbol)
            if cancelled is None or not cancelled.status.is_final:
                raise
        return cancelled or order

    def _send(self, client_order_id: str, intent: OrderIntent) -> ExchangeOrder:
        """Send one order under `orderLinkId` = `client_order_id`. A market order is refused
        (OrderRefused) when the best price is more than `max_slippage` from its decision price. An
        uncertain outcome is resolved by the client id: the order found is returned; none found
        raises ExchangeError (retry: the executor looks it up before sending again)."""
        import ccxt

        client = self._client(intent.sleeve)
        params: dict[str, Any] = {"orderLinkId": client_order_id, "category": _category(intent.symbol)}
        shared = self.shared(intent.sleeve)
        if intent.reduce_only and not shared:    # a virtual sleeve's exit may cross the net position
            params["reduceOnly"] = True
        if intent.post_only:
            params["postOnly"] = True
        if intent.order_type == OrderType.MARKET:
            self._slippage_guard(client, intent)
        stop = self.stops.get((intent.sleeve, intent.symbol))
        if stop is not None and intent.market == Market.PERP and not intent.reduce_only and not shared:
            params["stopLoss"] = stop.price              # attached at entry; moved by set_stop
        try:
            order = client.create_order(intent.symbol, intent.order_type.value, intent.side.value, intent.qty,
                                        intent.limit_price, params)
        except ccxt.InsufficientFunds as exc:
            raise InsufficientFunds(f"{intent.sleeve} {intent.symbol} {intent.side} {intent.qty:.8g}: {exc}") from None
        except ccxt.InvalidOrder as exc:
            if not _uncertain(exc):
                raise OrderRefused(f"Bybit refused {client_order_id} ({intent.symbol} {intent.side} "
                                   f"{intent.qty:.8g}): {str(exc)[:200]}") from None
            found = self.fetch_order(client_order_id, intent.sleeve, intent.symbol)
            if found is None:
                raise DuplicateOrder(f"{client_order_id}: Bybit says the id was used, but no such order is "
                                     "found") from None
            return found
        except ccxt.BadRequest as exc:
            if "stoploss" not in str(exc).lower() or _uncertain(exc):
                raise ExchangeError(f"sending {client_order_id}: {type(exc).__name__}: {str(exc)[:200]}") from None
            # the price passed the entry's stop since the decision: the position would be stopped out
            # at once; its engine sees at its next close that nothing filled
            raise OrderRefused(f"Bybit refused {client_order_id} ({intent.symbol} {intent.side} {intent.qty:.8g}): "
                               f"the price is past its stop loss {params.get('stopLoss')}: {str(exc)[:160]}") from None
        except ccxt.BaseError as exc:
            if not _uncertain(exc):
                raise ExchangeError(f"sending {client_order_id}: {type(exc).__name__}: {str(exc)[:200]}") from None
            found = self.fetch_order(client_order_id, intent.sleeve, intent.symbol)
            if found is None:
                raise ExchangeError(f"sending {client_order_id}: {type(exc).__name__}, and Bybit has no order "
                                    "under its id: it was not placed; a retry sends it") from None
            return found
        if not order.get("id"):                  # a 200 whose body was not JSON: ccxt raised nothing
            found = self.fetch_order(client_order_id, intent.sleeve, intent.symbol)
            if found is None:
                raise ExchangeError(f"sending {client_order_id}: an unreadable answer and no order under its "
                                    "id: a retry sends it")
            return found
        return (self.fetch_order(client_order_id, intent.sleeve, intent.symbol,
                                 history_first=intent.order_type == OrderType.MARKET)
                or self._order(order, intent))

    def _slippage_guard(self, client, intent: OrderIntent) -> None:
        decided = self.decision_prices.get(intent.symbol)
        if not decided:
            return
        book = self._call(client.fetch_order_book, f"order book of {intent.symbol}", intent.symbol, 1,
                          {"category": _category(intent.symbol)})
        side = book["asks"] if intent.side == Side.BUY else book["bids"]
        if not side:
            raise OrderRefused(f"{intent.symbol}: no {'ask' if intent.side == Side.BUY else 'bid'} in the book")
        best = float(side[0][0])
        if abs(best / decided - 1.0) > self.max_slippage:
            raise OrderRefused(f"slippage guard: {intent.symbol} best {'ask' if intent.side == Side.BUY else 'bid'} "
                               f"{best:.8g} is {best / decided - 1.0:+.2%} from the decision price {decided:.8g} "
                               f"(at most {self.max_slippage:.1%}, spec 8.1): not sent")

    def fetch_order(self, client_order_id: str, sleeve: Sleeve | None = None,
                    symbol: str | None = None, *, history_first: bool = False) -> ExchangeOrder | None:
        """The order under this client id (open, then history), or None when Bybit never accepted it.
        `history_first`: look in the history first (a market order just sent has mostly filled: one
        request instead of two)."""
        sleeve = sleeve or SLEEVE_OF_CODE.get(client_order_id[:2])
        client = self._client(sleeve)
        # the order history without a status filter: a spot order whose rest was cancelled
        # (PartiallyFilledCanceled) is neither ccxt's "closed" nor its "canceled"
        fetches = (client.fetch_open_orders, client.fetch_canceled_and_closed_orders)
        for category in ([_category(symbol)] if symbol else CATEGORIES.get(sleeve, ("spot", "linear"))):
            params = {"orderLinkId": client_order_id, "category": category}
            for fetch in (fetches[::-1] if history_first else fetches):
                found = self._call(fetch, f"looking up {client_order_id}", symbol, None, None, dict(params))
                found = [o for o in found if o.get("clientOrderId") == client_order_id]
                if found:
                    return self._order(found[0], None, sleeve)
        return None

    def cancel_order(self, client_order_id: str, sleeve: Sleeve | None = None,
                     reason: str = "cancelled") -> ExchangeOrder | None:
        order = self.fetch_order(client_order_id, sleeve)
        if order is None or order.status.is_final:
            return order
        client = self._client(order.intent.sleeve)
        self._call(client.cancel_order, f"cancelling {client_order_id}", None, order.intent.symbol,
                   {"orderLinkId": client_order_id, "category": _category(order.intent.symbol)})
        return self.fetch_order(client_order_id, order.intent.sleeve, order.intent.symbol)

    def _order(self, o: Mapping[str, Any], intent: OrderIntent | None, sleeve: Sleeve | None = None) -> ExchangeOrder:
        symbol = o["symbol"]
        cid = o.get("clientOrderId") or ""
        sleeve = intent.sleeve if intent is not None else (sleeve or SLEEVE_OF_CODE.get(cid[:2], Sleeve.CORE))
        if intent is None:
            intent = OrderIntent(sleeve, symbol, Market.PERP if _category(symbol) == "linear" else Market.SPOT,
                                 Side(o["side"]), float(o.get("amount") or 0.0) or 1e-12,
                                 OrderType.LIMIT if o.get("type") == "limit" and o.get("price") else OrderType.MARKET,
                                 "", cid, limit_price=float(o["price"]) if o.get("type") == "limit" and o.get("price") else None,
                                 reduce_only=bool(o.get("reduceOnly")))
        fee = o.get("fee") or {}
        status = STATUS.get(o.get("status") or "", OrderStatus.OPEN)
        if (o.get("info") or {}).get("orderStatus") == "PartiallyFilledCanceled":
            status = OrderStatus.CANCELLED       # ccxt says 'closed' (a spot rest cancelled): not FILLED
        return ExchangeOrder(cid, str(o.get("id")), intent, status,
                             utc(datetime.fromtimestamp((o.get("timestamp") or 0) / 1000, tz=None).astimezone())
                             if o.get("timestamp") else utc("1970-01-01"),
                             filled_qty=float(o.get("filled") or 0.0), fee=float(fee.get("cost") or 0.0),
                             fills=[], error=None)

    # the account: books, journal ---------------------------------------------------------------
    @property
    def books(self) -> Mapping[Sleeve, SleeveBook]:
        return _LazyBooks(self)

    def book_of(self, sleeve: Sleeve) -> SleeveBook:
        """The sleeve's account as our books hold it: USDT cash without the perps' initial margin,
        coins, and each linear position (signed qty, entry, margin, leverage)."""
        return self._account_book(sleeve)[0]

    def account_books(self) -> list[tuple[tuple[Sleeve, ...], SleeveBook, dict[str, float]]]:
        """Every account that holds more than one sleeve (virtual ledgers): (its sleeves, its book
        as `book_of` reads it, perp symbol -> Bybit's mark price), for reconciliation against the
        sum of those sleeves' books (`eternal.driver.account_differences`)."""
        out = []
        for _, sleeves in self.accounts():
            if len(sleeves) > 1:
                book, marks = self._account_book(sleeves[0])
                out.append((sleeves, book, marks))
        return out

    def _account_book(self, sleeve: Sleeve) -> tuple[SleeveBook, dict[str, float]]:
        client = self._client(sleeve)
        balance = self._call(client.fetch_balance, f"{sleeve}: wallet balance")
        positions = self._call(client.fetch_positions, f"{sleeve}: positions", None,
                               {"category": "linear", "settleCoin": QUOTE})
        book, marks = SleeveBook(sleeve), {}
        margin = 0.0
        for p in positions:
            qty = float(p.get("contracts") or 0.0)
            if not qty:
                continue
            qty = qty if p.get("side") == "long" else -qty
            lev = float(p.get("leverage") or 1.0)
            m = float(p.get("initialMargin") or abs(qty) * float(p["entryPrice"]) / lev)
            margin += m
            if p.get("markPrice"):
                marks[p["symbol"]] = float(p["markPrice"])
            book.perps[p["symbol"]] = PerpPosition(p["symbol"], qty, float(p["entryPrice"]), m, lev,
                                                   utc(datetime.fromtimestamp((p.get("timestamp") or 0) / 1000).astimezone()))
        total = balance.get("total", {})
        book.cash = float(total.get(QUOTE) or 0.0) - margin
        for coin, qty in total.items():
            if coin != QUOTE and qty:
                book.holdings[coin] = float(qty)
        return book, marks

    def journal_since(self, seq: int) -> list[tuple[int, str, Any]]:
        """Fills (executions) and funding (transaction-log settlements) of every sleeve numbered
        above `seq`, oldest first (see the module's docstring for the numbering)."""
        return self.journal_and_late(seq)[0]

    def journal_and_late(self, seq: int) -> tuple[list[tuple[int, str, Any]], list[tuple[int, str, Any]]]:
        """`journal_since(seq)`, and the fills of the `JOURNAL_LOOKBACK_MS` before `seq` (numbered
        at or below it), oldest first: Bybit lists an execution a moment after it happened, so
        one may appear after a later one was booked, behind the cursor. The caller books those of
        them it has not booked yet, by trade id (`Driver.sync`)."""
        since = seq // 1000 - JOURNAL_LOOKBACK_MS if seq else None
        until = None
        items: list[tuple[int, str, str, Any]] = []
        for client, sleeves in self.accounts():
            first = sleeves[0]
            self._client(first)
            categories = [c for c in ("spot", "linear") if any(c in CATEGORIES[s] for s in sleeves)]
            if until is None:               # the venue's clock: the windows end at its now
                until = int(self._call(client.fetch_time, "Bybit's time"))
            for category in categories:
                trades = self._history(client.fetch_my_trades, f"{first}: executions", since, until, 100,
                                       {"category": category})
                for t in trades:
                    items.append((int(t["timestamp"]), str(t["id"]), "fill",
                                  self._fill(self._owner(t, sleeves, category), t)))
            if "linear" not in categories:
                continue                          # no perps, no funding
            perps = tuple(s for s in sleeves if "linear" in CATEGORIES[s])
            ledger = self._history(client.fetch_ledger, f"{first}: transaction log", since, until, 50,
                                   {"type": "SETTLEMENT"}, code=QUOTE)
            for e in ledger:
                info = e.get("info") or {}
                if info.get("type") != "SETTLEMENT":
                    continue
                payment = self._funding(perps[0], e, info)
                items.append((int(e["timestamp"]), str(e["id"]), *(
                    ("funding", payment) if len(sleeves) == 1 else ("account_funding", (perps, payment)))))
        # within one ms by id as a number (Bybit's are numbers, the emulator's a letter and a number):
        # as text "e10" < "e9", and a row that Bybit shows after the others of its ms would take
        # the rank of one already booked
        items.sort(key=lambda x: (x[0], _id_order(x[1])))
        out, late, last_ms, rank = [], [], None, 0
        for ms, _, kind, item in items:
            rank = rank + 1 if ms == last_ms else 0
            last_ms = ms
            number = ms * 1000 + rank
            if number > seq:
                out.append((number, kind, item))
            elif kind == "fill":
                late.append((number, kind, item))
        return out, late

    def _history(self, fetch: Callable, doing: str, since: int | None, until: int, limit: int,
                 params: dict[str, Any], code: str | None = None) -> list[dict]:
        """Every row of a Bybit history (the execution list, the transaction log) with since <= time
        <= until (ms; since None: the last 7 days): read in windows of Bybit's widest span, 7 days,
        each newest first, page by page (the next page ends at the oldest row of a full one; rows
        read twice count once). Without the windows a ledger quiet for a week would ask for a week
        that never holds its next fill; without the pages, more than `limit` rows in a run would
        lose the oldest."""
        rows: dict[str, dict] = {}
        lo = since if since is not None else until - HISTORY_SPAN_MS
        while lo <= until:
            hi = end = min(until, lo + HISTORY_SPAN_MS)
            while True:
                page = self._call(fetch, doing, code, lo, limit, {**params, "endTime": end})
                rows.update((str(r["id"]), r) for r in page)
                if len(page) < limit:
                    break
                oldest = min(int(r["timestamp"]) for r in page)
                if oldest >= end:               # a whole page within one ms: more cannot be told apart
                    raise ExchangeError(f"{doing}: more than {limit} rows at {oldest} ms; Bybit cannot page them")
                end = oldest
            lo = hi + 1
        return list(rows.values())

    @staticmethod
    def _owner(t: Mapping[str, Any], sleeves: tuple[Sleeve, ...], category: str) -> Sleeve:
        """The sleeve an execution belongs to: the account's one sleeve, or, on an account of
        virtual sleeves, the sleeve named by its client order id's code. One with no id of ours (a
        liquidation of the net position) goes to the first sleeve trading its category: the
        account's reconciliation still balances, and the fill raises its alert."""
        if len(sleeves) == 1:
            return sleeves[0]
        cid = t.get("clientOrderId") or (t.get("info") or {}).get("orderLinkId") or ""
        owner = SLEEVE_OF_CODE.get(cid[:2])
        if owner in sleeves:
            return owner
        return next((s for s in sleeves if category in CATEGORIES[s]), sleeves[0])

    def _fill(self, sleeve: Sleeve, t: Mapping[str, Any]) -> Fill:
        symbol = t["symbol"]
        cid = t.get("clientOrderId") or (t.get("info") or {}).get("orderLinkId") or ""
        stop = self.stops.get((sleeve, symbol))
        info = t.get("info") or {}
        # an order Bybit made itself: the position's stop loss (ours, set by trading-stop: a run
        # that did not set it this process knows it by Bybit's stopOrderType) or a liquidation
        venue_reason = ("liquidation" if info.get("execType") in ("BustTrade", "AdlTrade") else
                        "trailing_stop" if info.get("stopOrderType") == "TrailingStop" else
                        "hard_stop" if info.get("stopOrderType") in ("StopLoss", "PartialStopLoss") else "venue")
        reason = ("" if cid else (stop.reason if stop is not None and venue_reason != "liquidation" else venue_reason))
        if cid[2:6] == STOP_TAG:                  # a virtual sleeve's own stop order (`_sync_stop`)
            reason = STOP_REASONS.get(cid[6:7], "hard_stop")
        fee = t.get("fee") or {}
        return Fill(cid or f"venue-{t['order']}", utc(datetime.fromtimestamp(t["timestamp"] / 1000).astimezone()),
                    sleeve, symbol, Market.PERP if _category(symbol) == "linear" else Market.SPOT, Side(t["side"]),
                    float(t["amount"]), float(t["price"]), float(fee.get("cost") or 0.0), fee.get("currency") or QUOTE,
                    "maker" if t.get("takerOrMaker") == "maker" else "taker", str(t["id"]), reason,
                    self._leverage_of(sleeve, symbol) if _category(symbol) == "linear" else 1.0)

    def _leverage_of(self, sleeve: Sleeve, symbol: str) -> float:
        """The symbol's leverage at Bybit: as this process set it, else read from its position (a
        fill booked by a later run than the one that sent it: 1.0 there booked twice the venue's
        margin; the 500-run chaos halted TREND-1 on the cash). A virtual sleeve's own leverage is
        not Bybit's (the account's position has the cap, 2x): unknown here, 1x is booked, the whole
        notional as margin, which the account's reconciliation (equity) does not see as a difference."""
        if self.shared(sleeve):
            return self.leverage.get((sleeve, symbol), 1.0)
        if (sleeve, symbol) not in self.leverage:
            found = self._call(self._client(sleeve).fetch_position, f"{sleeve} {symbol}: leverage", symbol,
                               {"category": "linear"})
            self.leverage[(sleeve, symbol)] = float(((found or {}).get("info") or {}).get("leverage") or 1.0)
        return self.leverage[(sleeve, symbol)]

    @staticmethod
    def _funding(sleeve: Sleeve, e: Mapping[str, Any], info: Mapping[str, Any]) -> FundingPayment:
        symbol = info.get("symbol", "")
        unified = f"{symbol[:-4]}/USDT:USDT" if symbol.endswith("USDT") else symbol
        size = float(info.get("size") or 0.0)
        qty = size if info.get("side") == "Buy" else -size
        # `change` is what the settlement did to the wallet (Bybit: change = cashFlow - funding - fee)
        amount = float(info["change"]) if info.get("change") not in (None, "") else -float(info.get("funding") or 0.0)
        rate = float(info.get("feeRate") or 0.0)
        price = float(info.get("tradePrice") or 0.0)
        return FundingPayment(utc(datetime.fromtimestamp(e["timestamp"] / 1000).astimezone()), sleeve, unified, qty,
                              price, rate, amount, -rate * qty * price)

    # the rest of the port ----------------------------------------------------------------------
    def on_market(self, key: str, ts: datetime, **market: Any) -> bool:
        return False                             # a real venue lives through time by itself

    def quote(self, symbol: str) -> Quote:
        t = self._call(self._client(Sleeve.CORE).fetch_ticker, f"ticker {symbol}", symbol,
                       {"category": _category(symbol)})
        return Quote(float(t["bid"]), float(t["ask"]), float(t["last"]))

    def set_leverage(self, sleeve: Sleeve, symbol: str, leverage: float) -> None:
        import ccxt

        if not 0 < leverage <= 2.0:
            raise ExchangeError(f"leverage {leverage} for {sleeve} {symbol} refused: 0 < leverage <= 2")
        if self.leverage.get((sleeve, symbol)) == leverage:
            return
        client = self._client(sleeve)
        # virtual sleeves share one position: the account's leverage is the cap (2x), each sleeve's
        # own leverage lives in our ledger (its fills' margin) and the risk step holds it
        venue = 2.0 if self.shared(sleeve) else leverage
        try:
            client.set_leverage(venue, symbol, {"category": "linear"})
        except ccxt.BadRequest as exc:
            if "110043" not in str(exc):         # "leverage not modified": already so
                raise ExchangeError(f"{sleeve} {symbol}: set leverage {leverage:g}: {exc}") from None
        except ccxt.BaseError as exc:
            raise ExchangeError(f"{sleeve} {symbol}: set leverage {leverage:g}: {type(exc).__name__}: {exc}") from None
        self.leverage[(sleeve, symbol)] = leverage

    def set_stop(self, sleeve: Sleeve, symbol: str, level: StopLevel | None) -> None:
        """The position's stop loss (Bybit trading-stop), replaced; None clears it (0). A virtual
        sleeve's: its own conditional order (`_sync_stop`)."""
        if level is not None and not (math.isfinite(level.price) and level.price > 0):
            raise ExchangeError(f"stop {level.price!r} for {sleeve} {symbol} refused: it must be positive")
        if self.shared(sleeve):
            if level is None:
                self.stops.pop((sleeve, symbol), None)
            else:
                self.stops[(sleeve, symbol)] = level
            self._sync_stop(sleeve, symbol)
            return
        client = self._client(sleeve)
        market = client.market(symbol)
        price = client.price_to_precision(symbol, level.price) if level is not None else "0"
        try:
            self._call(client.privatePostV5PositionTradingStop, f"{sleeve} {symbol}: trading stop",
                       {"category": "linear", "symbol": market["id"], "stopLoss": str(price), "positionIdx": 0,
                        "tpslMode": "Full"})
        except ExchangeError as exc:
            if "zero position" not in str(exc):
                raise
            # no position at the venue: either the stop of an entry about to be sent (kept: `_send`
            # attaches it as the order's stopLoss), or its stop or a liquidation closed the position
            # since the plan was made (the journal books the close; a stored plan failed on this at
            # every later run, found by the chaos run)
            if level is None:
                self.stops.pop((sleeve, symbol), None)
            else:
                self.stops[(sleeve, symbol)] = level
            return
        if level is None:
            self.stops.pop((sleeve, symbol), None)
        else:
            self.stops[(sleeve, symbol)] = level

    def _sync_stop(self, sleeve: Sleeve, symbol: str) -> None:
        """A virtual sleeve's stop at Bybit: one conditional market order (not reduce-only: the
        account's position is the sum of its sleeves') for the sleeve's whole position, on the
        side that closes it, triggered at its level by the last price. The one resting is amended
        when only its trigger or qty changed, else cancelled and sent again; none is left for a flat
        sleeve or a cleared level. A trigger the price already passed sends it as a market order now:
        that is what the stop is for. Safe to repeat: what rests is read first."""
        import ccxt

        client = self._client(sleeve)
        prefix = SLEEVE_CODES[sleeve] + STOP_TAG
        params = {"category": "linear", "orderFilter": "StopOrder"}
        resting = [o for o in self._call(client.fetch_open_orders, f"{sleeve} {symbol}: stop orders", symbol,
                                         None, None, dict(params))
                   if (o.get("clientOrderId") or "").startswith(prefix)]
        level, qty = self.stops.get((sleeve, symbol)), self.positions.get((sleeve, symbol), 0.0)
        try:
            amount = float(client.amount_to_precision(symbol, abs(qty))) if abs(qty) > 0 else 0.0
        except ccxt.InvalidOrder:        # under one qty step (a sum of fills' float rest): no order covers it
            amount = 0.0
        if level is None or amount <= 0:
            for o in resting:
                self._cancel_stop(client, o, symbol)
            return
        side = "sell" if qty > 0 else "buy"
        tag = next((t for t, r in STOP_REASONS.items() if r == level.reason), "h")
        trigger = float(client.price_to_precision(symbol, level.price))
        keep = next((o for o in resting if o["side"] == side and o["clientOrderId"][6:7] == tag), None)
        for o in resting:
            if o is not keep:
                self._cancel_stop(client, o, symbol)
        if keep is not None:
            if math.isclose(float(keep.get("triggerPrice") or 0), trigger) and math.isclose(float(keep["amount"]), amount):
                return
            try:
                self._call(client.edit_order, f"{sleeve} {symbol}: moving its stop", keep["id"], symbol, "market",
                           side, amount, None, {"category": "linear", "triggerPrice": trigger})
                return
            except ExchangeError:       # triggered meanwhile, or the trigger is passed: start again
                self._cancel_stop(client, keep, symbol)
        cid = f"{prefix}{tag}-{uuid.uuid4().hex}"[:36]
        try:
            client.create_order(symbol, "market", side, amount, None,
                                {"category": "linear", "orderLinkId": cid, "triggerPrice": trigger,
                                 "triggerDirection": "descending" if side == "sell" else "ascending"})
        except ccxt.BaseError as exc:
            if any(code in str(exc) for code in TRIGGER_PASSED_CODES):      # the stop is hit already
                self._call(client.create_order, f"{sleeve} {symbol}: stop {cid} hit at the send", symbol, "market",
                           side, amount, None, {"category": "linear", "orderLinkId": cid})
                self.positions[(sleeve, symbol)] = 0.0     # closed: its fill is booked from the journal
                return
            if not _uncertain(exc) or not self._call(client.fetch_open_orders, f"looking up {cid}", symbol, None, None,
                                                     {**params, "orderLinkId": cid}):
                self._raise(f"{sleeve} {symbol}: stop order {cid}", exc)

    def _cancel_stop(self, client, order: Mapping[str, Any], symbol: str) -> None:
        import ccxt

        try:
            client.cancel_order(order["id"], symbol, {"category": "linear", "orderFilter": "StopOrder"})
        except ccxt.OrderNotFound:                # triggered or cancelled meanwhile
            pass
        except ccxt.BaseError as exc:
            self._raise(f"cancelling stop order {order.get('clientOrderId')}", exc)

    def transfer(self, t: Transfer, key: str | None = None) -> None:
        """USDT into a sleeve's account under a transfer id derived from `key` (a repeated key moves
        nothing): from another sleeve's account, or (from_sleeve None) a deposit's share from the
        main account's deposit wallet. Each is one universal transfer made with the main account's
        key: Bybit refuses one between two sub-accounts made with a sub-account's key."""
        dst = self.clients.get(t.to_sleeve)
        if t.from_sleeve is not None and self.clients.get(t.from_sleeve) is dst:
            return                                # two virtual ledgers of one account: ours alone moves
        if t.from_sleeve is None and self.main is None and len(self.accounts()) == 1:
            return                                # one account and no main one: the deposit landed there
        transfer_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"eternal|{key or t}"))
        if t.from_sleeve is None and dst is not None and dst is self.main:
            if self.deposit_wallet != "UNIFIED":  # a sleeve on the main account: Funding -> Unified wallet
                self._inter_transfer(t, transfer_id)
            return
        client = self._main_client(f"transfer {t.from_sleeve or 'main'} -> {t.to_sleeve}")
        if self._transfer_done(client, transfer_id):      # a repeated plan (crash, retry): made before
            return
        params = {"transferId": transfer_id, "coin": t.asset, "amount": f"{t.qty:.8f}",
                  "fromMemberId": self._member_id(t.from_sleeve), "toMemberId": self._member_id(t.to_sleeve),
                  "fromAccountType": self.deposit_wallet if t.from_sleeve is None else "UNIFIED",
                  "toAccountType": "UNIFIED"}
        import ccxt

        try:     # not `_call`: a send is never simply repeated; an uncertain one is looked up first
            client.privatePostV5AssetTransferUniversalTransfer(params)
        except ccxt.BaseError as exc:
            if self._transfer_done(client, transfer_id):    # the answer was lost, or the id was used
                return
            self._raise(f"transfer {transfer_id} ({t.qty:.8f} {t.asset} {t.from_sleeve or 'main'} -> "
                        f"{t.to_sleeve})", exc)

    def _inter_transfer(self, t: Transfer, transfer_id: str) -> None:
        """A deposit's share from the main account's Funding wallet to its Unified one (where its
        virtual sleeves trade), under `transfer_id`: looked up before it is sent and after an error."""
        import ccxt

        def done() -> bool:
            found = self._call(self.main.privateGetV5AssetTransferQueryInterTransferList,
                               f"looking up transfer {transfer_id}", {"transferId": transfer_id, "coin": t.asset})
            rows = ((found or {}).get("result") or {}).get("list") or []
            return any(r.get("transferId") == transfer_id and r.get("status") == "SUCCESS" for r in rows)

        if done():
            return
        try:
            self.main.privatePostV5AssetTransferInterTransfer(
                {"transferId": transfer_id, "coin": t.asset, "amount": f"{t.qty:.8f}",
                 "fromAccountType": "FUND", "toAccountType": "UNIFIED"})
        except ccxt.BaseError as exc:
            if not done():
                self._raise(f"transfer {transfer_id} ({t.qty:.8f} {t.asset} Funding -> Unified wallet of the "
                            f"main account, for {t.to_sleeve})", exc)

    def _transfer_done(self, client, transfer_id: str) -> bool:
        """Bybit holds a successful universal transfer under this id (its transfer list)."""
        found = self._call(client.privateGetV5AssetTransferQueryUniversalTransferList,
                           f"looking up transfer {transfer_id}", {"transferId": transfer_id})
        rows = ((found or {}).get("result") or {}).get("list") or []
        return any(r.get("transferId") == transfer_id and r.get("status") == "SUCCESS" for r in rows)

    def _main_client(self, doing: str):
        if self.main is None:
            raise ConfigError(f"{doing}: Bybit moves money between sub-accounts with the master account's key "
                              "only; set ETERNAL_BYBIT__KEYS__MAIN__API_KEY and __API_SECRET")
        return self.main

    def _member_id(self, sleeve: Sleeve | None) -> int | str:
        """The UID of a sleeve's account (None: the main account), as configured or else as its key
        tells (/v5/user/query-api, read once)."""
        if sleeve not in self.member_ids:
            client = self._main_client("universal transfer") if sleeve is None else self._client(sleeve)
            info = self._call(client.privateGetV5UserQueryApi, f"{sleeve or 'main'}: API key information")
            uid = str(((info or {}).get("result") or {}).get("userID") or "")
            if not uid:
                name = (sleeve.weight_field if sleeve else "main").upper()
                raise ExchangeError(f"{sleeve or 'main'}: Bybit's API key information has no userID; set "
                                    f"ETERNAL_BYBIT__KEYS__{name}__MEMBER_ID")
            self.member_ids[sleeve] = uid
        uid = self.member_ids[sleeve]
        return int(uid) if uid.isdigit() else uid      # Bybit's member ids are integers

    def deposits_since(self, since: datetime, until: datetime) -> list[VenueDeposit]:
        """Deposits credited to the account where they land (the main one; with a single account and
        no main one, that account) with `since` <= time <= `until`, oldest first, every coin: Bybit's
        on-chain deposit records, read in windows within Bybit's 30 days, every page. Only status 3
        (success, the one final state of a credited deposit) is returned: a pending or failed one is
        not money we have; a pending one comes back once credited, stamped then (`successAt`)."""
        client = self._deposit_client()
        found: dict[str, VenueDeposit] = {}
        lo, end = int(since.timestamp() * 1000), int(until.timestamp() * 1000)
        while lo <= end:
            hi, cursor = min(end, lo + DEPOSIT_WINDOW_MS), None
            while True:
                page = self._call(client.fetch_deposits, "deposit records", None, lo, DEPOSIT_PAGE,
                                  {"endTime": hi, **({"cursor": cursor} if cursor else {})})
                for d in page:
                    deposit_id = d.get("id") or d.get("txid")
                    if d.get("status") == "ok" and deposit_id and d.get("timestamp"):
                        found[str(deposit_id)] = VenueDeposit(
                            str(deposit_id), utc(datetime.fromtimestamp(d["timestamp"] / 1000).astimezone()),
                            str(d.get("currency")), float(d.get("amount") or 0.0))
                cursor = next((c for d in page if (c := (d.get("info") or {}).get("nextPageCursor"))), None)
                if not cursor or len(page) < DEPOSIT_PAGE:
                    break
            lo = hi + 1
        return sorted(found.values(), key=lambda d: (d.ts, d.deposit_id))

    def _deposit_client(self):
        if self.main is None and len(self.accounts()) == 1:
            return self._client(next(iter(self.clients)))
        client = self._main_client("reading deposits")
        if client.markets is None:                # ccxt parses by the currencies: the sub-accounts' markets
            if self.clients:
                loaded = self._client(next(iter(self.clients)))
                client.set_markets(loaded.markets, loaded.currencies)
            else:
                self._call(client.load_markets, "main: load markets")
        return client

    def stake(self, sleeve: Sleeve, asset: str, qty: float, key: str | None = None) -> float:
        return 0.0                                # Bybit Earn is not wired: nothing is staked

    @property
    def rules(self) -> dict:
        """The venue's trading rules per symbol (`eternal.instruments.Instrument`) from the loaded
        markets (instruments-info), rebuilt when the markets are read again. A symbol Bybit does
        not list has none: the venue refuses its orders."""
        from eternal.instruments import SYMBOLS, instruments_from_ccxt_markets

        if not self.clients:
            return {}
        markets = self._client(next(iter(self.clients))).markets or {}
        cached = getattr(self, "_rules", None)
        if cached is None or cached[0] is not markets:
            self._rules = (markets, instruments_from_ccxt_markets(markets, [s for s in SYMBOLS if s in markets]))
        return self._rules[1]

    def predicted_funding_rate(self, symbol: str) -> float | None:
        """The next settlement's rate as Bybit's ticker predicts it (`fundingRate`), per settlement."""
        client = self._client(next(iter(self.clients)))
        t = self._call(client.fetch_funding_rate, f"funding rate of {symbol}", symbol, {"category": "linear"})
        rate = t.get("fundingRate")
        return float(rate) if rate is not None else None

    def withdrawals_suspended(self) -> list[str]:
        """Coins whose withdrawals Bybit reports suspended on every chain (ccxt fetch_currencies)."""
        client = self._client(next(iter(self.clients)))
        currencies = self._call(client.fetch_currencies, "currencies")
        return sorted(code for code, c in (currencies or {}).items()
                      if code in ("USDT", "BTC", "ETH") and c.get("withdraw") is False)


class _LazyBooks(Mapping):
    """`exchange.books`: each sleeve with an account of its own, read when asked for
    (reconciliation asks each once); virtual sleeves are in `account_books` instead."""

    def __init__(self, ex: BybitExchange):
        self.ex, self._cache = ex, {}
        self._own = [s for s in ex.clients if not ex.shared(s)]

    def __getitem__(self, sleeve: Sleeve) -> SleeveBook:
        if sleeve not in self._own:
            raise KeyError(sleeve)
        if sleeve not in self._cache:
            self._cache[sleeve] = self.ex.book_of(sleeve)
        return self._cache[sleeve]

    def __iter__(self):
        return iter(self._own)

    def __len__(self) -> int:
        return len(self._own)
