import time, json
import pandas as pd
import pytest
from sqlalchemy import select
from eternal.data.importer import import_dir
from eternal.data.store import MarketStore
from eternal.store.db import connect
from eternal.store.models import FillRow, OrderRow, EventRow, PlanRow, CycleRunRow, FundingPaymentRow, TransferRow, EquitySnapshotRow
pd.set_option("display.width", 250); pd.set_option("display.max_colwidth", 120)

def dump(engine):
    with engine.connect() as c:
        print(pd.read_sql(select(FillRow.ts, FillRow.sleeve, FillRow.symbol, FillRow.side, FillRow.qty, FillRow.price, FillRow.fee, FillRow.liquidity, FillRow.reason), c).to_string())
        print(pd.read_sql(select(EventRow.ts, EventRow.kind, EventRow.sleeve, EventRow.message), c).to_string())
        print(pd.read_sql(select(FundingPaymentRow), c).to_string())
        print(pd.read_sql(select(TransferRow), c).to_string())

def runs(seq):
    from flows.daily_cycle import daily_cycle
    from flows.funding_collection import funding_collection
    from flows.quarterly_rebalance import quarterly_rebalance
    f = {"d": daily_cycle, "f": funding_collection, "q": quarterly_rebalance}
    for k, asof in seq:
        t = time.time()
        r = f[k](asof=asof)
        print("RUN", k, asof, round(time.time() - t, 2), {k: v for k, v in r.items()})

@pytest.mark.parametrize("scen", ["A", "B", "C", "D"])
def test_explore(scen, db_url, shared_data, monkeypatch, prefect_harness):
    if not db_url.startswith("sqlite"): pytest.skip()
    monkeypatch.setenv("ETERNAL_DATABASE_URL", db_url)
    engine = connect(db_url)
    import_dir(MarketStore(engine), shared_data)
    if scen == "A":
        runs([("d", "2024-08-08T00:05:00Z"), ("d", "2024-08-09T00:05:00Z"), ("f", "2024-08-09T08:05:00Z"), ("d", "2024-08-10T00:05:00Z")])
    if scen == "B":
        monkeypatch.setenv("ETERNAL_TACTICAL__MAX_LOT_AGE_DAYS", "1")
        runs([("d", "2022-06-02T00:05:00Z"), ("d", "2022-06-03T00:05:00Z"), ("d", "2022-06-04T00:05:00Z")])
    if scen == "C":
        runs([("d", "2023-12-31T00:05:00Z"), ("q", "2024-01-01T00:15:00Z"), ("q", "2024-01-01T00:15:00Z"), ("d", "2024-01-02T00:05:00Z")])
    if scen == "D":
        runs([("d", "2024-01-02T00:05:00Z"), ("f", "2024-01-02T08:05:00Z"), ("f", "2024-01-02T16:05:00Z")])
    dump(engine)
