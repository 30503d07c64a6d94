"""Orders per second through our execution path to Bybit (the V5 emulator), ccxt's limiter off (issue 13).

`eternal.execution.execute` as the driver calls it: each intent looked up by its client order id
(`orderLinkId`) at the venue, then sent, then read back; the real ccxt client over HTTP to the
emulator on 127.0.0.1. Sustained: batches of 100 spot market orders, median of several batches.
Burst: the first 10 orders of a fresh client (connection set up included).

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


def batch(ex: BybitExchange, n: int, tag: str) -> float:
    intents = [OrderIntent(Sleeve.CORE, "BTC/USDT", Market.SPOT, Side.BUY, 0.001, OrderType.MARKET, "bench",
                           f"{tag}:{i}") for i in range(n)]
    now = datetime.now(UTC)
    start = time.perf_counter()
    result = execute(intents, ex, flow="bench", scheduled=now, now=now, known={})
    elapsed = time.perf_counter() - start
    assert result.sent == n, result.sent
    return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=5, help="timed batches of 100 (median)")
    args = ap.parse_args()
    with BybitEmulator() as emu:
        emu.set_prices_from_candles("2024-01-01")
        bursts = [batch(venue(emu, f"burst-{i}"), 10, f"burst{i}") for i in range(3)]
        ex = venue(emu, "sustained")
        batch(ex, 10, "warm")
        rates = [batch(ex, BATCH, f"b{i}") for i in range(args.batches)]
    print(f"orders/s through execute() to the Bybit emulator, limiter off: sustained median "
          f"{statistics.median(rates):.0f} (range {min(rates):.0f}-{max(rates):.0f}, {args.batches} x {BATCH}); "
          f"burst (first 10 of a fresh client, markets loaded) median {statistics.median(bursts):.0f}")
    print("each order: a lookup by orderLinkId (open orders, then the order history), the create, a read back")


if __name__ == "__main__":
    main()
