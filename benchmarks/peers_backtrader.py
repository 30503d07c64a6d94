"""TREND-1 written for backtrader: the peer that `benchmarks/peers.py` runs beside `eternal backfill`.

A port of `eternal/engines/trend.py` (one state machine per asset: SMA 50/200 on the BTC and ETH
USDT perpetuals, ADX and ATR filters, hard and trailing ATR stops, the 30-day time exit, the
funding exit, the no-trend breaker, risk sizing capped at 50 % of equity per asset and 2x in all)
and of the replay's capital rules (`eternal/replay.py`, `eternal/driver.py`, the paper exchange):

* decisions on the close of day D, market orders filled at the open of D+1 at the taker fee;
* a stop set at the close of D is a resting stop order for D+1's bar (a long's fills at
  min(open, stop), a short's at max(open, stop): backtrader's own stop order does exactly that);
  an entry carries its hard stop (decision close -/+ 2 ATR) from its fill on, as in the replay
  (a stop order sent right after the entry's market order);
* funding settlements of day D (a side table read from the data dir's funding CSVs) are paid at
  D's open price on the position held at the settlement: the 00:00 one on the position before
  D's open fills, the later ones on the position after them (stops of D count at the close);
* positions still open when the window ends are closed at the last close (reason `end`).

Indicators are backtrader's own (SMA, ATR and ADX with Wilder's smoothing, warmed up from each
series' first candle); the correlation halving is the Pearson correlation of the last 30 daily
returns. Nothing from `eternal` is imported: this is what a user of backtrader would write.

Run: python benchmarks/peers_backtrader.py --data-dir DIR --start 2020-06-14 --end 2026-01-01
--capital 100000 --out fills.csv. Prints one JSON line: the loop's time (cerebro.run), the final
equity, the number of fills.
"""
from __future__ import annotations

import argparse
import bisect
import csv
import json
import math
import statistics
import time
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import backtrader as bt

ASSETS = {"BTC": ("BTC/USDT:USDT", "ohlcv_1d_BTC-USDT_perp.csv", "funding_8h_BTCUSDT_perp.csv"),
          "ETH": ("ETH/USDT:USDT", "ohlcv_1d_ETH-USDT_perp.csv", "funding_8h_ETHUSDT_perp.csv")}
# Bybit's linear perp trading rules (eternal/exchange/instruments.json): qty step, min qty, min notional
RULES = {"BTC": (0.001, 0.001, 5.0), "ETH": (0.01, 0.01, 5.0)}
TAKER_FEE = 0.00055                 # Bybit VIP0 perp taker, a fraction of notional
MIN_NOTIONAL_USDT = 10.0            # TREND's own smallest entry


class Params:
    """TREND-1's defaults (eternal.config.TrendParams)."""
    fast_sma, slow_sma, adx_length, atr_length = 50, 200, 14, 14
    adx_entry, adx_no_trend, no_trend_days, resume_days = 25.0, 20.0, 14, 3
    hard_stop_atr, trailing_stop_atr, time_stop_days = 2.0, 3.0, 30
    funding_exit_rate_8h, risk_per_trade = 0.001, 0.01
    max_asset_notional, max_leverage = 0.5, 2.0
    correlation_window_days, correlation_halving = 30, 0.9


def floor_qty(qty: float, step: float) -> float:
    """`qty` down to the step (a hair under a step counts as on it), as the exchange takes it."""
    decimals = max(0, -Decimal(repr(step)).normalize().as_tuple().exponent)
    return round(math.floor(qty / step + 1e-9) * step, decimals)


def tradable_qty(asset: str, qty: float, price: float) -> float:
    step, min_qty, min_notional = RULES[asset]
    q = floor_qty(qty, step)
    return q if q > 0 and q >= min_qty * (1 - 1e-9) and q * price >= min_notional else 0.0


class Funding:
    """One perpetual's settlements: (time, rate) sorted, looked up by day and by 'latest at'."""

    def __init__(self, path: Path):
        with open(path, newline="") as f:
            rows = [(datetime.strptime(r["timestamp"], "%Y-%m-%dT%H:%M:%SZ"), float(r["funding_rate"]))
                    for r in csv.DictReader(f)]
        self.times = [t for t, _ in rows]
        self.rates = [r for _, r in rows]
        self.by_day: dict[date, list[tuple[datetime, float]]] = {}
        for t, r in rows:
            self.by_day.setdefault(t.date(), []).append((t, r))

    def latest(self, at: datetime) -> float | None:
        j = bisect.bisect_right(self.times, at)
        return self.rates[j - 1] if j else None


class AssetState:
    def __init__(self):
        self.phase = "SCANNING"
        self.side = self.entry_atr = self.opened = self.extreme = self.trail = self.stop = None
        self.stop_reason = self.exit_reason = None
        self.trail_active = self.paused = False
        self.stop_order = None


class Trend(bt.Strategy):
    params = (("start", None), ("last_day", None), ("funding", None), ("p", Params))

    def __init__(self):
        p = self.p.p
        self.names = list(ASSETS)
        self.ind = {}
        for name, d in zip(self.names, self.datas):
            self.ind[name] = {
                "fast": bt.ind.SMA(d.close, period=p.fast_sma), "slow": bt.ind.SMA(d.close, period=p.slow_sma),
                "adx": bt.ind.ADX(d, period=p.adx_length), "atr": bt.ind.ATR(d, period=p.atr_length)}
        self.state = {n: AssetState() for n in self.names}
        self.held = {n: 0.0 for n in self.names}        # position at the last close
        self.opened_today = {n: 0.0 for n in self.names}  # market fills at this bar's open
        self.fills: list[dict] = []
        self.funding_paid = 0.0
        self.final_equity = None

    # what the broker did -----------------------------------------------------------------------
    def notify_order(self, order):
        if order.status != order.Completed:
            return
        name = order.data._name
        day = bt.num2date(order.executed.dt).date()
        self.fills.append({"timestamp": day.isoformat(), "symbol": ASSETS[name][0],
                           "side": "buy" if order.isbuy() else "sell", "qty": abs(order.executed.size),
                           "price": order.executed.price, "fee": order.executed.comm,
                           "reason": order.info.reason})
        if order.exectype == bt.Order.Market:
            self.opened_today[name] += order.executed.size
        if order.info.reason == "entry":
            self.state[name].opened = day

    # the close of each day ---------------------------------------------------------------------
    def next(self):
        day = self.datas[0].datetime.date(0)
        assert all(d.datetime.date(0) == day for d in self.datas), "datas out of step"
        funding = 0.0
        for name, d in zip(self.names, self.datas):
            before, after = self.held[name], self.held[name] + self.opened_today[name]
            for ts, rate in self.p.funding[name].by_day.get(day, ()):
                qty = before if ts.hour == ts.minute == 0 else after     # 00:00 settles before the open
                funding += -rate * qty * d.open[0]
            self.opened_today[name] = 0.0
        if day < self.p.start:
            funding = 0.0
        self.broker.add_cash(funding)
        self.funding_paid += funding
        equity = self.broker.getvalue() + funding          # getvalue is the bar's, before add_cash lands
        if day >= self.p.start:
            if day == self.p.last_day:
                self.close_all(day, equity)
            else:
                self.decide(day, equity)
        for name, d in zip(self.names, self.datas):
            self.held[name] = self.getposition(d).size

    def close_all(self, day: date, equity: float) -> None:
        """The window's end: every position closed at the last close, taker fee (the replay's)."""
        for name, d in zip(self.names, self.datas):
            size = self.getposition(d).size
            if size:
                fee = abs(size) * d.close[0] * TAKER_FEE
                equity -= fee
                self.fills.append({"timestamp": (day + timedelta(days=1)).isoformat(), "symbol": ASSETS[name][0],
                                   "side": "sell" if size > 0 else "buy", "qty": abs(size), "price": d.close[0],
                                   "fee": fee, "reason": "end"})
        self.final_equity = equity

    def decide(self, day: date, equity: float) -> None:
        p = self.p.p
        next_open = day + timedelta(days=1)
        for name, d in zip(self.names, self.datas):
            st, ind = self.state[name], self.ind[name]
            close, sma_f, sma_s = d.close[0], ind["fast"][0], ind["slow"][0]
            adx, atr = ind["adx"][0], ind["atr"][0]
            pos = self.getposition(d)
            size = pos.size
            if st.stop_order is not None:
                self.cancel(st.stop_order)
                st.stop_order = None

            # 1. what happened since the last close
            if st.phase == "ENTERING":
                st.phase = "IN_POSITION" if size else "SCANNING"
                st.extreme = None
            elif st.phase == "EXITING":
                st.phase = "SCANNING" if not size else "IN_POSITION"
            if st.phase == "IN_POSITION" and not size:           # the stop fired
                st.phase = "SCANNING"
            if not size and st.phase == "SCANNING":
                st.side = st.entry_atr = st.opened = st.extreme = st.trail = st.stop = None
                st.stop_reason = st.exit_reason = None
                st.trail_active = False

            # 2. the no-trend breaker: 14 days of ADX < 20 pause entries until 3 days of ADX > 25
            recent = ind["adx"].get(size=p.no_trend_days)
            if not st.paused and len(recent) == p.no_trend_days and all(v < p.adx_no_trend for v in recent):
                st.paused = True
            last = ind["adx"].get(size=p.resume_days)
            if st.paused and len(last) == p.resume_days and all(v > p.adx_entry for v in last):
                st.paused = False

            # 3. in a position: stops, trailing, exits
            if size and st.phase == "IN_POSITION":
                long = size > 0
                st.extreme = close if st.extreme is None else (max(st.extreme, close) if long
                                                               else min(st.extreme, close))
                if close > pos.price if long else close < pos.price:
                    st.trail_active = True
                if st.trail_active and not math.isnan(atr):
                    level = st.extreme - p.trailing_stop_atr * atr if long else st.extreme + p.trailing_stop_atr * atr
                    st.trail = level if st.trail is None else (max(st.trail, level) if long else min(st.trail, level))
                entry_atr = st.entry_atr if st.entry_atr is not None else atr
                hard = pos.price - p.hard_stop_atr * entry_atr if long else pos.price + p.hard_stop_atr * entry_atr
                tighter = st.trail is not None and (st.trail > hard if long else st.trail < hard)
                st.stop, st.stop_reason = (st.trail, "trailing_stop") if tighter else (hard, "hard_stop")
                reason = None
                if not math.isnan(sma_s) and (close < sma_s if long else close > sma_s):
                    reason = "sma_exit"
                elif long and (rate := self.p.funding[name].latest(datetime.combine(next_open, datetime.min.time()))) \
                        is not None and rate > p.funding_exit_rate_8h:
                    reason = "funding_exit"
                elif next_open >= st.opened + timedelta(days=p.time_stop_days):
                    reason = "time_stop"
                if reason is not None:        # a market exit at the next open (its stop cannot fire after it)
                    self.close(data=d).addinfo(reason=reason)
                    st.exit_reason, st.phase = reason, "EXITING"
                else:
                    order = (self.sell if long else self.buy)(data=d, size=abs(size), exectype=bt.Order.Stop,
                                                              price=st.stop)
                    order.addinfo(reason=st.stop_reason)
                    st.stop_order = order
                continue

            # 4. flat: look for an entry
            if st.paused:
                st.phase = "NO_TRADE"
                continue
            if st.phase == "NO_TRADE":
                st.phase = "SCANNING"
            if any(math.isnan(v) for v in (close, sma_f, sma_s, adx, atr)) or atr <= 0:
                continue
            long_signal = close > sma_s and sma_f > sma_s and adx > p.adx_entry
            short_signal = close < sma_s and sma_f < sma_s and adx > p.adx_entry
            if not (long_signal or short_signal):
                continue
            qty = tradable_qty(name, self.size(name, equity, close, atr), close)
            if qty * close < MIN_NOTIONAL_USDT:
                continue
            st.side, st.entry_atr = ("long" if long_signal else "short"), atr
            st.trail, st.trail_active, st.extreme = None, False, None
            # the hard stop goes out with the entry, at the decision close -/+ 2 ATR, as a stop order
            # sent right after it: the broker fills the entry at the next open first, then checks
            # that bar against the stop (a bracket's stop child would only rest from the bar after)
            stop = close - p.hard_stop_atr * atr if long_signal else close + p.hard_stop_atr * atr
            (self.buy if long_signal else self.sell)(data=d, size=qty).addinfo(reason="entry")
            st.stop_order = (self.sell if long_signal else self.buy)(data=d, size=qty, exectype=bt.Order.Stop,
                                                                     price=stop)
            st.stop_order.addinfo(reason="hard_stop")
            st.phase = "ENTERING"

    def size(self, name: str, equity: float, close: float, atr: float) -> float:
        """qty = risk x E / (hard-stop distance); halved on high BTC/ETH correlation; then the caps."""
        p = self.p.p
        qty = p.risk_per_trade * equity / (p.hard_stop_atr * atr)
        corr = self.correlation()
        if corr is not None and corr > p.correlation_halving:
            qty /= 2
        qty = min(qty, p.max_asset_notional * equity / close)
        others = sum(abs(self.getposition(d).size) * d.close[0] for n, d in zip(self.names, self.datas)
                     if n != name and self.getposition(d).size)
        return min(qty, max(0.0, p.max_leverage * equity - others) / close)

    def correlation(self) -> float | None:
        """Pearson correlation of BTC's and ETH's last 30 close-to-close returns."""
        n = self.p.p.correlation_window_days
        series = [d.close.get(size=n + 1) for d in self.datas]
        if any(len(s) < n + 1 for s in series):
            return None
        returns = [[b / a - 1.0 for a, b in zip(s[:-1], s[1:])] for s in series]
        return statistics.correlation(*returns)


def run(data_dir: Path, start: date, end: date, capital: float) -> tuple[Trend, float]:
    cerebro = bt.Cerebro(stdstats=False)
    last_day = end - timedelta(days=1)
    for name, (_, candles, _) in ASSETS.items():
        cerebro.adddata(bt.feeds.GenericCSVData(
            dataname=str(data_dir / candles), dtformat="%Y-%m-%dT%H:%M:%SZ",
            todate=datetime.combine(last_day, datetime.max.time()), datetime=0, open=1, high=2, low=3, close=4,
            volume=5, openinterest=-1, timeframe=bt.TimeFrame.Days), name=name)
    funding = {name: Funding(data_dir / f) for name, (_, _, f) in ASSETS.items()}
    cerebro.addstrategy(Trend, start=start, last_day=last_day, funding=funding)
    cerebro.broker.setcash(capital)
    # USDT-margined linear perps at up to 2x: margin = notional / 2, fee a fraction of notional
    cerebro.broker.addcommissioninfo(bt.CommInfoBase(commission=TAKER_FEE, commtype=bt.CommInfoBase.COMM_PERC,
                                                     percabs=True, stocklike=True, leverage=Params.max_leverage))
    t = time.perf_counter()
    strategy = cerebro.run()[0]
    return strategy, time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--start", type=date.fromisoformat, required=True)
    ap.add_argument("--end", type=date.fromisoformat, required=True, help="exclusive")
    ap.add_argument("--capital", type=float, required=True)
    ap.add_argument("--out", type=Path, required=True, help="the fills, as CSV")
    args = ap.parse_args()
    strategy, loop = run(args.data_dir, args.start, args.end, args.capital)
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, ["timestamp", "symbol", "side", "qty", "price", "fee", "reason"])
        w.writeheader()
        w.writerows(strategy.fills)
    print(json.dumps({"loop_s": loop, "final_equity": strategy.final_equity, "fills": len(strategy.fills),
                      "funding": strategy.funding_paid}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
