import time, json
import pandas as pd
import pytest
from sqlalchemy import select
from eternal.data.importer import import_dir
from eternal.data.store import MarketStore
from eternal.store.db import connect
from eternal.store.models import FillRow, OrderRow, EventRow, PlanRow, CycleRunRow

def test_explore(db_url, shared_data, monkeypatch, prefect_harness):
    monkeypatch.setenv("ETERNAL_DATABASE_URL", db_url)
    engine = connect(db_url)
    t = time.time()
    import_dir(MarketStore(engine), shared_data)
    print("import", time.time() - t)
    from flows.daily_cycle import daily_cycle
    for asof in ["2024-01-02T00:05:00Z", "2024-01-02T00:05:00Z", "2024-01-03T00:05:00Z"]:
        t = time.time()
        r = daily_cycle(asof=asof)
        print("run", asof, time.time() - t)
        print(json.dumps(r, indent=1, default=str)[:3000])
    with engine.connect() as c:
        print(pd.read_sql(select(FillRow), c).to_string())
        print(pd.read_sql(select(OrderRow), c).to_string())
        print(pd.read_sql(select(EventRow.ts, EventRow.kind, EventRow.sleeve, EventRow.message), c).to_string())
