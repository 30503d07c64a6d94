"""Orders per second through the live path, after 0, 1,000 and 10,000 prior orders (issue 10).

The live path as the flows run it: the driver's `act` (write-ahead plan stored first, then each
intent sent under its client order id: a plan this run has just stored is not looked up first; the
paper exchange saves each change in its rows) and the ledger's commit of the event, on a SQLite file. Batches of 100 CORE market
orders, each batch one event; between batches the next open fills them (not timed). Prints the
median of several batches at each history size.

    python benchmarks/orders.py [--db /tmp/orders.db]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from eternal.config import load_settings  # noqa: E402
from eternal.driver import Batch, Driver, Due, Kind  # noqa: E402
from eternal.plans import plan_to_json  # noqa: E402
from eternal.models import Market, OrderIntent, OrderType, Plan, Side, Sleeve, SleeveBook, utc  # noqa: E402
from eternal.store.db import connect  # noqa: E402
from eternal.store.driver_store import SqlLedger, open_paper_exchange  # noqa: E402

BATCH = 100
SIZES = (0, 1_000, 10_000)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default=os.path.join(tempfile.mkdtemp(), "orders.db"))
    ap.add_argument("--batches", type=int, default=5, help="timed batches per size (median)")
    args = ap.parse_args()
    s = load_settings()
    engine = connect(f"sqlite:///{args.db}")
    ledger = SqlLedger(engine)
    shares = {sl: 1.0 if sl == Sleeve.CORE else 0.0 for sl in Sleeve}
    books = {sl: SleeveBook(sl, 1e12 * w) for sl, w in shares.items()}
    exchange = open_paper_exchange(engine, s.fees, books)
    driver = Driver(None, exchange, ledger, s, list(Sleeve), orchestrated=False)
    start = utc("2021-01-01")
    p = driver.open(1e12, shares, start)
    t = start
    placed = 0

    def one_batch(timed: bool, size: int = BATCH) -> float:
        nonlocal t, placed
        t += timedelta(hours=1)
        due = Due(t, Kind.SETTLEMENT)
        intents = [OrderIntent(Sleeve.CORE, "BTC/USDT", Market.SPOT, Side.BUY, 0.001, OrderType.MARKET,
                               "bench", f"b{n}") for n in range(size)]
        plan = Plan(t, t, intents, {}, [])
        batch = Batch(due)
        began = time.perf_counter()
        ledger.store_plan(due.key, plan_to_json(plan, {}, None, []))
        driver.act(p, due, plan, batch, fresh=True)       # as process() after storing it
        p.clock, batch.plan_key = due.key, due.key
        ledger.commit(p, batch)
        took = time.perf_counter() - began
        exchange.on_market(Due(t, Kind.OPEN).key, t, opens={"BTC/USDT": 30_000.0})   # fill them (not timed)
        fill = Batch(Due(t, Kind.OPEN))
        driver.sync(p, fill)
        p.clock = Due(t, Kind.OPEN).key
        ledger.commit(p, fill)
        placed += size
        return size / took

    print(f"orders/s through the live path (SQLite, batches of {BATCH}, median of {args.batches}):")
    for size in SIZES:
        while placed < size:            # the history, in events of up to 1,000 orders (not timed)
            one_batch(False, min(1_000, size - placed))
        rates = [one_batch(True) for _ in range(args.batches)]
        print(f"  after {size:>6,} prior orders: {statistics.median(rates):8.1f} orders/s "
              f"(min {min(rates):.1f}, max {max(rates):.1f})")


if __name__ == "__main__":
    main()
