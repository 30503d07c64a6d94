"""Issue 14: the Prefect UI as the console, and refusals an operator can act on.

Every deployment's form describes each parameter, takes a plain date and shows no internal
parameter (checked on the schema and through the API of the session's Prefect server); every
refusal ends the command with one line on stderr, no traceback, in seconds (timed in-process: the
imports are paid once per session); `eternal deposit` and `eternal rebalance` run on a paper ledger.
"""
from __future__ import annotations

import time

import pytest

from eternal.cli import main
from eternal.store.db import connect



def _form(name: str) -> dict:
    """The parameter schema Prefect stores for the deployment (the Run form is drawn from it)."""
    from deployments.serve import deployments

    return {d.name: d for d in deployments()}[name]._parameter_openapi_schema.model_dump()


def _flow(name: str):
    from deployments.serve import SCHEDULES

    return SCHEDULES[name][0]


@pytest.mark.parametrize("name", ["daily-cycle", "funding-collection", "quarterly-rebalance", "deposit-intake",
                                  "halt", "resume", "backfill", "sweep"])
def test_every_deployment_form_describes_each_parameter_and_hides_internal_ones(name):
    props = _form(name)["properties"]
    assert props, name
    for param, spec in props.items():
        assert spec.get("description"), f"{name}: parameter {param} has no description"
    assert not {"progress", "database_url", "backfill_database_url"} & set(props)


@pytest.mark.parametrize("name, params", [
    ("backfill", {"start": "2022-01-01", "end": "2022-02-01"}),
    ("sweep", {"grid": {"trend_1.fast_sma": [40, 50]}, "start": "2023-01-01", "end": "2024-01-01T00:00:00"}),
    ("daily-cycle", {"asof": "2024-01-03"}),
    ("daily-cycle", {"asof": "2024-01-03T00:05:00"}),          # no offset: UTC
    ("funding-collection", {"asof": "2024-01-03T08:05:00Z"}),
    ("quarterly-rebalance", {"asof": "2024-01-01"})])
def test_a_plain_date_or_naive_time_passes_the_schema_and_becomes_utc(name, params):
    from datetime import UTC, datetime

    from prefect.utilities.schema_tools.validation import is_valid

    assert is_valid(params, _form(name))
    values = _flow(name).validate_parameters(params)
    for key, text in ((k, v) for k, v in params.items() if isinstance(v, str)):     # the times
        want = datetime.fromisoformat(text.replace("Z", "+00:00"))
        want = want.replace(tzinfo=UTC) if want.tzinfo is None else want
        assert values[key] == want and values[key].tzinfo is not None


def test_a_deployment_accepts_a_plain_date_through_the_prefect_api(prefect_harness):
    from prefect.client.orchestration import get_client

    from flows.backfill import backfill

    dep_id = backfill.to_deployment(name="console-check").apply()
    with get_client(sync_client=True) as client:
        dep = client.read_deployment(dep_id)
        props = dep.parameter_openapi_schema["properties"]
        assert all(p.get("description") for p in props.values()) and "progress" not in props
        run = client.create_flow_run_from_deployment(dep_id, parameters={"start": "2022-01-01", "end": "2022-02-01"})
        assert run.parameters == {"start": "2022-01-01", "end": "2022-02-01"}
        client.delete_flow_run(run.id)
        client.delete_deployment(dep_id)


def _refused(argv, capsys) -> tuple[str, int]:
    capsys.readouterr()
    code = main(argv)     # refused before any flow starts (timings: measured by hand, not asserted here)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0], code


def test_backfill_start_before_the_data_names_the_first_day_allowed(shared_data, capsys):
    line, _ = _refused(["backfill", "--start", "2020-01-01", "--end", "2025-01-01", "--data-dir", str(shared_data)],
                       capsys)
    assert "--start 2020-01-01 is before the first day the data allows, 2020-09-14" in line
    assert "give --start 2020-09-14 or later" in line


def test_backfill_end_before_start_says_so(capsys):
    line, _ = _refused(["backfill", "--start", "2024-01-01", "--end", "2023-01-01"], capsys)
    assert line == ("error: --end 2023-01-01 is not after --start 2024-01-01 (the end is exclusive): give an end "
                    "at least one day after the start")


def test_backfill_end_after_the_data_names_the_last_day(shared_data, capsys):
    line, _ = _refused(["backfill", "--start", "2024-01-01", "--end", "2027-01-01", "--data-dir", str(shared_data)],
                       capsys)
    assert "is after the data, whose last day is 2026-01-05: give --end 2026-01-06 or earlier" in line


def test_a_sqlite_path_in_a_missing_directory_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ETERNAL_DATABASE_URL", f"sqlite:///{tmp_path / 'typo' / 'eternal.db'}")
    line, _ = _refused(["run", "daily", "--asof", "2024-01-03"], capsys)
    assert "its directory" in line and "typo" in line and "does not exist" in line
    assert not (tmp_path / "typo").exists()
    _refused(["deposit", "100", "--reference", "r"], capsys)
    # the backfill's own ledger, given on the command line: named as such, before any flow starts
    line, _ = _refused(["backfill", "--database-url", f"sqlite:///{tmp_path / 'typo2' / 'b.db'}"], capsys)
    assert "typo2" in line and "correct --database-url" in line and not (tmp_path / "typo2").exists()


@pytest.fixture
def stored(tmp_path, monkeypatch, dataset):
    from tests.flow_support import store_market

    url = f"sqlite:///{tmp_path / 'eternal.db'}"
    monkeypatch.setenv("ETERNAL_DATABASE_URL", url)
    store_market(connect(url), dataset, "2023-06-01", "2024-01-10")
    return url


def test_run_daily_without_internet_says_so_in_one_line_naming_the_offline_way(stored, monkeypatch, capsys):
    monkeypatch.setenv("ETERNAL_DATA__REFRESH_BEFORE_CYCLE", "true")
    monkeypatch.setenv("ETERNAL_EXCHANGE__PUBLIC_URL", "http://127.0.0.1:9")     # nothing listens: offline
    line, _ = _refused(["run", "daily", "--asof", "2024-03-01"], capsys)
    assert line.startswith("error: no internet: Bybit cannot be reached")
    assert "stored up to 2024-01-09" in line and "eternal data import DIR" in line and "ETERNAL_DATA_DIR" in line


def test_run_daily_reads_eternal_data_dir_and_refuses_a_day_after_it(stored, shared_data, monkeypatch, capsys):
    monkeypatch.setenv("ETERNAL_DATA__REFRESH_BEFORE_CYCLE", "true")
    monkeypatch.setenv("ETERNAL_DATA_DIR", str(shared_data))
    line, _ = _refused(["run", "daily", "--asof", "2026-03-01"], capsys)
    assert "holds no daily candle of 2026-02-28" in line and "run with --asof 2026-01-06 or earlier" in line


@pytest.mark.flow
def test_deposit_and_rebalance_commands_on_a_paper_ledger(stored, prefect_harness, capsys):
    assert main(["run", "daily", "--asof", "2023-12-30T00:05Z"]) == 0
    capsys.readouterr()
    assert main(["deposit", "1000", "--reference", "bank-1"]) == 0
    assert "deposit bank-1: 1,000.00 USDT waits for the next daily close" in capsys.readouterr().out
    assert main(["deposit", "1000", "--reference", "bank-1"]) == 0
    assert "was taken before: nothing booked" in capsys.readouterr().out
    assert main(["rebalance", "--asof", "2024-01-01T00:15Z"]) == 0
    out = capsys.readouterr().out
    assert '"flow": "quarterly-rebalance"' in out or "quarterly" in out
    from eternal.store.driver_store import SqlLedger

    p = SqlLedger(connect(stored)).load()       # booked once, at its time (now): the next close splits it
    assert [(d["reference"], d["usdt"]) for d in p.deposits] == [("bank-1", 1000.0)]
