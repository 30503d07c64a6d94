"""prefect.yaml as an operator uses it: `prefect deploy --all` against a Prefect server (the session's
test harness), each deployment triggered with parameters and run by a process worker."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eternal.store.db import connect
from eternal.store.ledger import LedgerStore
from tests.conftest import ROOT

# `make slow`: about 70 s of subprocesses (prefect deploy, a worker, five flow runs) on one test
# worker; tests/test_deployments.py checks prefect.yaml against the served deployments in `make test`
pytestmark = [pytest.mark.db, pytest.mark.flow, pytest.mark.slow]
BIN = Path(sys.executable).parent


def prefect(*args: str, env: dict) -> subprocess.CompletedProcess:
    r = subprocess.run([str(BIN / "prefect"), "--no-prompt", *args], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, f"prefect {' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def test_prefect_deploy_all_then_every_deployment_runs_to_completion(db_url, dataset, shared_data, tmp_path,
                                                                      monkeypatch, prefect_harness):
    if db_url.startswith("postgresql"):
        pytest.skip("60 s a run: the deployments run on SQLite; the flows' PostgreSQL path is covered by "
                    "the crash matrix and the flow tests")
    from prefect.settings import PREFECT_API_URL

    from tests.flow_support import store_market

    monkeypatch.setenv("ETERNAL_DATABASE_URL", db_url)
    store_market(connect(db_url), dataset, "2023-01-01", "2024-01-01")
    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value(), ETERNAL_HOME=str(ROOT),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    prefect("work-pool", "create", "eternal", "--type", "process", "--overwrite", env=env)
    run_all(env, dataset, shared_data, tmp_path, db_url)      # no limit created by hand: none is needed


def run_all(env: dict, dataset, shared_data, tmp_path, db_url: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    out = prefect("deploy", "--all", env=env).stdout
    names = ["daily-cycle", "funding-collection", "quarterly-rebalance", "deposit-intake", "backfill"]
    for name in names:
        assert f"Deployment '{name}/{name}' successfully created" in " ".join(out.split())

    parameters = {
        "deposit-intake": {"amount_usdt": 500.0, "reference": "it-deposit"},
        "daily-cycle": {"asof": "2024-01-01T00:05:00Z"},
        "funding-collection": {"asof": "2023-12-31T16:05:00Z"},
        "quarterly-rebalance": {"asof": "2024-01-01T00:15:00Z"},
        "backfill": {"start": "2023-06-01T00:00:00Z", "end": "2023-07-01T00:00:00Z", "engines": "core",
                     "data_dir": str(shared_data), "out": str(tmp_path / "bf"),
                     "monthly_deposit_usdt": 100.0},
    }
    runs = {name: run_deployment(f"{name}/{name}", parameters=parameters[name], timeout=0) for name in names}
    worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "eternal", "--limit", "2"],
                              env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, states = time.monotonic() + 300, {}
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline:
                states = {n: client.read_flow_run(r.id).state for n, r in runs.items()}
                if all(st is not None and st.is_final() for st in states.values()):
                    break
                time.sleep(1.0)
    finally:
        worker.terminate()
        try:
            log = worker.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:      # a busy machine: the worker's shutdown is not what is tested
            worker.kill()
            log = worker.communicate(timeout=30)[0]
    assert {n: st.type.value for n, st in states.items()} == {n: "COMPLETED" for n in names}, log[-4000:]
    ledger = LedgerStore(connect(db_url))
    from eternal.store.driver_store import SqlLedger

    assert SqlLedger(connect(db_url)).deposit_known("it-deposit")   # taken at a close, or waiting for it
    assert ledger.last_run("daily-cycle", "completed") is not None
    assert ledger.last_run("quarterly-rebalance", "completed") is not None
    assert (tmp_path / "bf" / "summary.json").exists()
