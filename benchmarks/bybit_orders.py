"""Orders per second through our execution path to Bybit (the V5 emulator), ccxt's limiter off (issue 13).

`eternal.execution.execute` as the driver calls it, the real ccxt client over HTTP to the emulator
on 127.0.0.1. A plan the run has just stored (the driver's normal case): each order sent, then read
back. A plan recovered after a crash: each order first looked up by its client order id
(`orderLinkId`, open orders then the history), then sent and read back. Sustained: batches of 100
spot market orders, median of several batches, the two cases alternating. Burst: the first 10
orders of a fresh client (connection set up included).

    python benchmarks/bybit_orders.py [--batches 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import UTC, datetime

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from eternal.exchange.bybit import BybitExchange, make_client  # noqa: E402
from eternal.execution import execute  # noqa: E402
from eternal.models import Market, OrderIntent, OrderType, Side, Sleeve  # noqa: E402
from tests.bybit_emulator import BybitEmulator  # noqa: E402

BATCH = 100


def venue(emu: BybitEmulator, name: str) -> BybitExchange:
    emu.add_account(name, "secret-" + name, usdt=10_000_000.0)
    client = make_client(name, "secret-" + name, mode="live", url=emu.url)
    client.enableRateLimit = False                  # our path's own cost, not Bybit's allowance
    return BybitExchange({Sleeve.CORE: client})


def batch(ex: BybitExchange, n: int, tag: str, fresh: bool = True) -> float:
    intents = [OrderIntent(Sleeve.CORE, "BTC/USDT", Market.SPOT, Side.BUY, 0.001, OrderType.MARKET, "bench",
                           f"{tag}:{i}") for i in range(n)]
    now = datetime.now(UTC)
    start = time.perf_counter()
    result = execute(intents, ex, flow="bench", scheduled=now, now=now, known={}, fresh=fresh)
    elapsed = time.perf_counter() - start
    assert result.sent == n, result.sent
    return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=5, help="timed batches of 100 (median)")
    args = ap.parse_args()
    if args.batches < 1:
        ap.error(f"--batches must be 1 or more, got {args.batches}")
    with BybitEmulator() as emu:
        emu.set_prices_from_candles("2024-01-01")
        bursts = [batch(venue(emu, f"burst-{i}"), 10, f"burst{i}") for i in range(3)]
        ex = venue(emu, "sustained")
        batch(ex, 10, "warm")
        rates, recovered = [], []
        for i in range(args.batches):
            rates.append(batch(ex, BATCH, f"b{i}"))
            recovered.append(batch(ex, BATCH, f"r{i}", fresh=False))
    print(f"orders/s through execute() to the Bybit emulator, limiter off: sustained median "
          f"{statistics.median(rates):.0f} (range {min(rates):.0f}-{max(rates):.0f}, {args.batches} x {BATCH}); "
          f"burst (first 10 of a fresh client, markets loaded) median {statistics.median(bursts):.0f}; "
          f"a plan recovered after a crash: {statistics.median(recovered):.0f} "
          f"({min(recovered):.0f}-{max(recovered):.0f})")
    print("each order: the create and a read back (a recovered plan's: two lookups by orderLinkId first)")


if __name__ == "__main__":
    main()
