"""Issue 14: the Prefect UI as the console, and refusals an operator can act on.

Every deployment's form describes each parameter, takes a plain date and shows no internal
parameter (checked on the schema and through the API of the session's Prefect server); every
refusal ends the command with one line on stderr, no traceback, in seconds (timed in-process: the
imports are paid once per session); `eternal deposit` and `eternal rebalance` run on a paper ledger.
"""
from __future__ import annotations

import json
import re

import pytest

from eternal.cli import main
from eternal.store.db import connect
from tests.flow_support import run_cli



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
def test_deposit_and_rebalance_commands_on_a_paper_ledger(stored, prefect_harness):
    """An offline replay: a deposit given --asof 2023-12-30 10:00 is split by the close of that
    day, which `rebalance --asof 2024-01-01T00:15Z` processes (the quarter's first close among
    its events); it then prints each sleeve's weight against its target."""
    from eternal.store.driver_store import SqlLedger

    assert run_cli(["run", "daily", "--asof", "2023-12-30T00:05Z"])[0] == 0
    code, out, _ = run_cli(["deposit", "1000", "--reference", "bank-1", "--asof", "2023-12-30T10:00Z"])
    assert code == 0 and "deposit bank-1: 1,000.00 USDT waits for the next daily close after 2023-12-30 10:00 UTC" in out
    code, out, _ = run_cli(["deposit", "1000", "--reference", "bank-1", "--asof", "2023-12-30T10:00Z"])
    assert code == 0 and "was taken before: nothing booked" in out
    # a time behind the ledger's clock (the open of 2023-12-30) is refused: no close would take it
    code, _, err = run_cli(["deposit", "500", "--reference", "bank-0", "--asof", "2023-12-29T12:00Z"])
    assert code == 2 and err.startswith("error: --asof 2023-12-29T12:00Z is before the ledger's clock")
    assert len(err.strip().splitlines()) == 1
    p = SqlLedger(connect(stored)).load()
    assert [(d["reference"], d["usdt"]) for d in p.deposits] == [("bank-1", 1000.0)]
    assert sum(p.capital_in.values()) == pytest.approx(100_000)

    code, out, err = run_cli(["rebalance", "--asof", "2024-01-01T00:15Z"])
    assert code == 0, err
    p = SqlLedger(connect(stored)).load()
    assert p.deposits == [] and sum(p.capital_in.values()) == pytest.approx(101_000)   # split at the close
    assert "weights after the run, at the close of 2023-12-31" in out
    rows = re.findall(r"^(core|trend-1|trend-2|funding|tactical)\s+([\d,.]+)\s+([\d.]+)%\s+([\d.]+)%\s+([+-][\d.]+)%",
                      out, re.M)
    from tasks.status import valuation
    from eternal.data.store import MarketStore
    from eternal.config import load_settings

    v = valuation(load_settings(), p, MarketStore(connect(stored)))
    assert {r[0] for r in rows} == {"core", "trend-1", "trend-2", "funding", "tactical"}
    for sleeve, equity, weight, target, off in rows:      # the valuation's numbers, as printed
        sl = next(x for x in v.sleeves if x.value == sleeve)
        assert float(equity.replace(",", "")) == round(v.equity(sl), 2)
        assert float(weight) == round(v.weight(sl) * 100, 2) and float(target) == round(v.targets[sl] * 100, 2)
    assert sum(float(r[2]) for r in rows) == pytest.approx(100, abs=0.03)

    # without --asof a deposit is stamped now: it waits (this replay's closes are long before it)
    assert run_cli(["deposit", "250", "--reference", "bank-2"])[0] == 0
    assert [d["reference"] for d in SqlLedger(connect(stored)).load().deposits] == ["bank-2"]


@pytest.mark.flow
def test_run_daily_and_status_report_the_same_portfolio(stored, prefect_harness):
    """A run at 00:05 goes past the close it decides on: the open of 2024-01-02 fills CORE's first
    tranche and TREND's entries (fees paid, at the open's price). `status` valued those later books
    at the close of 2024-01-01 and said a total other than the run's; both now say the close's
    valuation, the day's equity records, and status names the change since apart."""
    from eternal.models import utc
    from eternal.reporting import money
    from eternal.store.ledger import LedgerStore

    code, out, err = run_cli(["run", "daily", "--asof", "2024-01-02T00:05Z"])
    assert code == 0, err
    report = json.loads(out)
    assert report["day"] == "2024-01-01" and report["orders"] > 0
    engine = connect(stored)
    records = LedgerStore(engine).equity_records(utc("2024-01-01"))
    assert report["total_equity"] == pytest.approx(sum(records.values()), abs=1e-6)
    code, out, _ = run_cli(["status"])
    assert code == 0
    shown = float(re.search(r"^portfolio ([\d,.]+) USDT", out, re.M).group(1).replace(",", ""))
    assert shown == round(report["total_equity"], 2)
    # the books after the open's fills, at the close of 2024-01-01: what status used to headline
    from tests.conftest import SHARED_DATA
    from eternal.data.csv_files import read_dir

    data = read_dir(SHARED_DATA)
    closes = {a: float(data.daily(f"{a}/USDT").loc["2024-01-01", "close"]) for a in ("BTC", "ETH", "SOL")}
    books = LedgerStore(engine).load_books()
    marks = {sym: float(data.daily(sym).loc["2024-01-01", "close"]) for b in books.values() for sym in b.perps}
    now = sum(b.equity(closes, marks) for b in books.values())
    assert abs(now - report["total_equity"]) > 0.01          # the two totals an operator saw
    assert (f"since that close: {money(now - report['total_equity'], signed=True)} USDT" in out
            and f"at that close's prices: {money(now)} USDT" in out), out
