import pytest
from eternal.store.db import connect
from tests.flow_support import daily, latest_artifact, table_rows, store_market

def test_explore(db_url, dataset, monkeypatch, prefect_harness):
    if not db_url.startswith("sqlite"): pytest.skip()
    monkeypatch.setenv("ETERNAL_DATABASE_URL", db_url)
    engine = connect(db_url)
    store_market(engine, dataset, "2023-01-01", "2024-01-10")
    r = daily("2024-01-02T00:05:00Z")
    print(r["orders"], r["line"])
    t = table_rows(latest_artifact("daily-cycle-orders"))
    print(len(t))
    for x in t: print(x)
