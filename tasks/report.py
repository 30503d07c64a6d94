"""The backfill report's files and Prefect artifacts: the shell around `eternal.report`.

Rows come from a replay in memory or from a ledger database (`eternal report DIR_OR_DB`); charts
are drawn with matplotlib's Agg backend (no display)."""
from __future__ import annotations

import base64
import json
import math
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from eternal import report as rep
from eternal.data.csv_files import DataSet
from eternal.models import QUOTE, Event, FundingPayment, Sleeve, Transfer
from eternal.report_markdown import markdown

if TYPE_CHECKING:
    from sqlalchemy import Engine

CHARTS = ("equity.png", "drawdown.png", "sleeves.png")


def closes_frame(data: DataSet) -> pd.DataFrame:
    """Daily spot closes, day x asset ('BTC', ...), from a data set."""
    cols = {}
    for sym, tf in data.candles:
        if tf == "1d" and ":" not in sym and sym.endswith("/USDT"):
            c = data.daily(sym)["close"]
            c.index = pd.to_datetime(c.index, utc=True)
            cols[sym.split("/")[0]] = c
    return pd.DataFrame(cols)


def transfer_frame(transfers: Sequence[Transfer]) -> pd.DataFrame:
    return pd.DataFrame([{"ts": t.ts, "from_sleeve": t.from_sleeve.value if t.from_sleeve else None,
                          "to_sleeve": t.to_sleeve.value, "asset": t.asset, "qty": t.qty, "reason": t.reason}
                         for t in transfers], columns=rep.TRANSFER_COLUMNS)


def funding_frame(payments: Sequence[FundingPayment]) -> pd.DataFrame:
    return pd.DataFrame([{"ts": p.ts, "sleeve": p.sleeve.value, "symbol": p.symbol, "amount": p.amount}
                         for p in payments], columns=rep.FUNDING_COLUMNS)


def event_dicts(events: Sequence[Event]) -> list[dict]:
    return [{"ts": e.ts, "kind": e.kind, "sleeve": e.sleeve.value if e.sleeve else None, "message": e.message,
             "data": e.data} for e in events]


def rows_from_result(result, closes: pd.DataFrame | None) -> rep.LedgerRows:
    """A replay's rows; its opening allocation as transfers from outside at the start, as a ledger
    database records them."""
    opening = [Transfer(result.start, None, Sleeve(s), "USDT", usdt, "initial allocation")
               for s, usdt in result.opening.items() if usdt > 0]
    equity = pd.DataFrame(result.equity_rows)
    equity["sleeve"] = equity["sleeve"].astype(str)
    return rep.LedgerRows(equity, result.trades, transfer_frame([*opening, *result.transfers]),
                          funding_frame(result.funding), event_dicts(result.events), closes)


def rebuild(source: str, out_dir: Path | None, data: DataSet | None, settings) -> tuple[rep.Report, Path]:
    """`eternal report DIR_OR_DB`: the report of a ledger (DIR/backfill.db, a .db file or a database
    URL), written to `out_dir` (default: DIR, or the .db file's directory)."""
    from eternal.errors import EternalError
    from eternal.store.db import connect

    path = Path(source)
    if "://" in source:
        url, home = source, Path(".")
    elif path.is_dir():
        if not (path / "backfill.db").exists():
            raise EternalError(f"{path} holds no backfill.db: give a backfill's output directory, a .db file "
                               "or a database URL")
        url, home = f"sqlite:///{(path / 'backfill.db').resolve()}", path
    elif path.is_file():
        url, home = f"sqlite:///{path.resolve()}", path.parent
    else:
        raise EternalError(f"{source}: no such directory or file; give a backfill's output directory, "
                           "a .db file or a database URL")
    closes = closes_frame(data) if data is not None else None
    rows = rows_from_db(connect(url), closes)
    built = rep.build(rows, core_alone(data, settings, rows) if data is not None else None)
    out = out_dir or home
    write(built, out)
    return built, out


def rows_from_db(engine: Engine, closes: pd.DataFrame | None) -> rep.LedgerRows:
    """A ledger database's rows (a backfill's or a live ledger's)."""
    from sqlalchemy import select

    from eternal.replay import TRADE_COLUMNS
    from eternal.store.models import EquitySnapshotRow, EventRow, FillRow, FundingPaymentRow, TransferRow

    with engine.connect() as conn:
        def frame(q) -> pd.DataFrame:
            return pd.DataFrame([dict(r._mapping) for r in conn.execute(q)])
        equity = frame(select(EquitySnapshotRow.day, EquitySnapshotRow.sleeve, EquitySnapshotRow.equity,
                              EquitySnapshotRow.cash).order_by(EquitySnapshotRow.day))
        fills = frame(select(FillRow).order_by(FillRow.ts, FillRow.id))
        transfers = frame(select(*(getattr(TransferRow, c) for c in rep.TRANSFER_COLUMNS)).order_by(TransferRow.id))
        funding = frame(select(*(getattr(FundingPaymentRow, c) for c in rep.FUNDING_COLUMNS))
                        .order_by(FundingPaymentRow.ts))
        events = [dict(r._mapping) for r in conn.execute(
            select(EventRow.ts, EventRow.kind, EventRow.sleeve, EventRow.message, EventRow.data)
            .where(EventRow.kind == "regime_change"))]
    if not len(equity):
        raise rep_error("holds no equity record: nothing to report")
    # the fee in USDT, as a backfill's trades.csv has it (a spot buy's fee is charged in the coin bought)
    trades = (fills.rename(columns={"ts": "timestamp"}).assign(
        timestamp=lambda f: f.timestamp.map(lambda t: pd.Timestamp(t).isoformat()),
        fee=lambda f: f.fee.where(f.fee_asset == QUOTE, f.fee * f.price))[TRADE_COLUMNS] if len(fills) else
              pd.DataFrame(columns=TRADE_COLUMNS))
    return rep.LedgerRows(equity, trades, transfers if len(transfers) else pd.DataFrame(columns=rep.TRANSFER_COLUMNS),
                          funding if len(funding) else pd.DataFrame(columns=rep.FUNDING_COLUMNS), events, closes)


def rep_error(msg: str):
    from eternal.errors import EternalError
    return EternalError(f"the ledger {msg}")


def deposits_of(rows: rep.LedgerRows) -> list[tuple[datetime, float]]:
    """Deposits after the opening, by time (to replay CORE alone with the same money)."""
    t = rows.transfers
    start = pd.to_datetime(rows.equity["day"], utc=True).min()
    ext = t[t.from_sleeve.isna() & (t.asset == "USDT")]
    ext = ext[[rep.close_day(ts) >= start for ts in ext.ts]]
    return [(pd.Timestamp(ts).to_pydatetime(), float(q)) for ts, q in ext.groupby("ts").qty.sum().items()]


# files ------------------------------------------------------------------------------------------
def write(report: rep.Report, out_dir: Path, summary: dict | None = None, drawing: Charts | None = None) -> list[Path]:
    """report.md, the three charts, and the report's numbers in summary.json (beside `summary`).
    `drawing`: the charts' process started before the replay (`Charts`), handed this report unless
    it has it already; else they are drawn here."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if drawing is None:
        drawing = Charts(out_dir, beside=False)
    if not drawing.sent:
        drawing.draw(report)
    (out_dir / "report.md").write_text(markdown(report))
    path = out_dir / "summary.json"
    if summary is None:
        summary = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**summary, "report": jsonable(report.summary)}, indent=2, default=str) + "\n")
    drawing.wait()
    return [out_dir / n for n in ("report.md", *CHARTS, "summary.json")]


def jsonable(v):
    """Strict JSON: an infinite profit factor (no losing trade) as "inf", NaN as null."""
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [jsonable(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def load_matplotlib() -> None:
    """matplotlib's pyplot on the Agg backend (no display), imported (0.3 s): a caller waiting for
    work beside (a backfill's CORE alone) imports it meanwhile."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401


class Charts:
    """The report's charts (CHARTS, drawn by `charts`) in a child forked before the replay
    (`eternal.aside.Primed`): it imports matplotlib (0.25-0.45 s, on the critical path of a
    backfill when imported after its replay) on the machine's other core while this process
    replays, then draws the report it is sent (`draw`) while this process saves the ledger and
    writes the other files (`wait`). Where no child can be forked, or with `beside` False, `draw`
    draws them here. `cancel()` ends the child (a failed or interrupted backfill: nothing is
    drawn). The child dies with this process."""

    def __init__(self, out_dir: Path, beside: bool = True, primed=None) -> None:
        """`primed`: the child already started by the caller (`tasks.charts_child.prime`), else
        started here."""
        from tasks.charts_child import prime

        self.out_dir, self.sent = out_dir, False
        self._primed = primed if primed is not None else prime(out_dir) if beside else None
        if self._primed is not None and not self._primed.beside:
            self._primed = None             # no fork here: drawn in process at `draw`

    def draw(self, report: rep.Report) -> None:
        """The charts of `report`: handed to the child, or drawn here (and done) without one."""
        self.sent = True
        if self._primed is None:
            charts(report, self.out_dir)
        else:
            self._primed.send(report)

    def wait(self) -> None:
        """The charts are written (or the child's error raised here)."""
        if self._primed is not None:
            self._primed.result()
            self._primed = None

    def cancel(self) -> None:
        if self._primed is not None:
            self._primed.cancel()
            self._primed = None


def _load_charts(out_dir: Path) -> Path:
    """`Charts`' preparation: matplotlib imported, and a small chart of the same kinds (dates, a log
    scale, a legend, a tight layout) drawn to memory, so its first text measure loads the fonts
    (0.1-0.15 s) and mathtext, the date ticks and the PNG encoder load now, beside the replay."""
    import io

    load_matplotlib()
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1), dpi=30)
    ax.plot(pd.date_range("2020-01-01", periods=3, tz="UTC"), [1.0, 10.0, 100.0], label="warm-up")
    ax.set_yscale("log")
    ax.set_title("warm-up")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(io.BytesIO(), format="png")
    plt.close(fig)
    return out_dir


def charts(report: rep.Report, out_dir: Path) -> None:
    """equity.png here while drawdown.png and sleeves.png are drawn beside, in a forked child
    (`eternal.aside`; in process where this process cannot fork): matplotlib draws on one core."""
    from eternal.aside import Aside

    load_matplotlib()           # once, before the fork: the child has it too

    beside = Aside(_charts, report, out_dir, ("drawdown", "sleeves"), name="the charts", spawn=False)
    try:
        _charts(report, out_dir, ("equity",))
        beside.result()
    finally:
        beside.cancel()


def _charts(report: rep.Report, out_dir: Path, which: tuple[str, ...]) -> None:
    """The named charts of CHARTS ("equity", "drawdown", "sleeves"), each to NAME.png in `out_dir`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sleeves = list(report.weights.columns)
    bench = [c for c in report.equity.columns if c not in ("total", *sleeves)]
    if "equity" in which:
        _equity_chart(plt, report, bench, out_dir)
    if "drawdown" in which:
        _drawdown_chart(plt, report, bench, out_dir)
    if "sleeves" in which:
        _sleeves_chart(plt, report, sleeves, out_dir)


def _days(index: pd.DatetimeIndex):
    """The days as naive UTC datetime64 for matplotlib: the same instants, converted as one array
    (a timezone-aware index is converted one Timestamp at a time, a fifth of a chart's time)."""
    return index.tz_convert(None).to_numpy() if index.tz is not None else index.to_numpy()


def _equity_chart(plt, report: rep.Report, bench: list[str], out_dir: Path) -> None:
    fig, ax = plt.subplots(figsize=(11, 5.5), dpi=90)
    days = _days(report.equity.index)
    ax.plot(days, report.equity["total"].to_numpy(), label="portfolio", color="black", lw=1.6)
    for name in bench:
        ax.plot(days, report.equity[name].to_numpy(), label=name, lw=1.0)
    if len(report.deposits):
        ax.scatter(_days(report.deposits.index),
                   report.equity["total"].reindex(report.deposits.index).to_numpy(), marker="^",
                   color="tab:green", s=18, zorder=3, label="deposit")
    ax.set_yscale("log")
    ax.set_ylabel("equity (USDT, log scale)")
    ax.set_title(f"Equity and benchmarks, {report.summary['start']} .. {report.summary['end_exclusive']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(out_dir / "equity.png")
    plt.close(fig)


def _drawdown_chart(plt, report: rep.Report, bench: list[str], out_dir: Path) -> None:
    fig, ax = plt.subplots(figsize=(11, 4), dpi=90)
    for name in ["total", *bench]:
        u = report.unit[name]
        dd = u / u.cummax().clip(lower=1.0) - 1.0
        kw = {"color": "black", "lw": 1.4} if name == "total" else {"lw": 0.9, "alpha": 0.8}
        ax.plot(_days(dd.index), (dd * 100).to_numpy(), label="portfolio" if name == "total" else name, **kw)
    ax.fill_between(_days(report.unit.index), 0,
                    ((report.unit["total"] / report.unit["total"].cummax().clip(lower=1.0) - 1) * 100).to_numpy(),
                    color="tab:red", alpha=0.2)
    ax.set_ylabel("drawdown of the unit value (%)")
    ax.set_title("Drawdown (time-weighted: deposits neither hide nor add)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(out_dir / "drawdown.png")
    plt.close(fig)


def _sleeves_chart(plt, report: rep.Report, sleeves: list[str], out_dir: Path) -> None:
    fig, ax = plt.subplots(figsize=(11, 4.5), dpi=90)
    w = report.weights.clip(lower=0.0) * 100
    ax.stackplot(_days(w.index), *[w[c].to_numpy() for c in sleeves], labels=sleeves, alpha=0.85)
    ax.set_ylim(0, 100)
    ax.set_ylabel("share of portfolio equity (%)")
    ax.set_title("Sleeve weights over time")
    ax.legend(loc="upper left", ncol=len(sleeves))
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "sleeves.png")
    plt.close(fig)


# Prefect ----------------------------------------------------------------------------------------
def artifacts(report: rep.Report, out_dir: Path) -> None:
    """The report on the flow run: report.md with the charts inline (data URIs), its main tables as
    table artifacts, and links to the files."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

    md = markdown(report)
    for name in CHARTS:
        data = base64.b64encode((out_dir / name).read_bytes()).decode()
        md = md.replace(f"]({name})", f"](data:image/png;base64,{data})")
    create_markdown_artifact(md, key="backfill-report", description="backfill report (report.md)")
    for name in ("gates", "benchmarks", "by sleeve"):
        t = report.tables[name]
        t = t if name == "gates" else t.reset_index(names="portfolio" if name == "benchmarks" else "sleeve")
        create_table_artifact(json.loads(t.to_json(orient="records")), key=f"backfill-{name.replace(' ', '-')}",
                              description=f"backfill: {name} (fractions: 0.01 is 1 %)")
    for name in ("report.md", *CHARTS):
        create_link_artifact(f"file://{(out_dir / name).resolve()}", link_text=name,
                             description=f"backfill {name}")


def replays_core_alone(rows: rep.LedgerRows) -> bool:
    """True when `core_alone` replays (a run of CORE and other sleeves), not a few ms."""
    sleeves = set(rows.equity["sleeve"])
    return Sleeve.CORE.value in sleeves and len(sleeves) > 1


def core_alone(data: DataSet, settings, rows: rep.LedgerRows, result=None) -> pd.Series | None:
    """CORE's equity replayed alone with the same capital, days and deposits: what the other
    sleeves added to CORE. The run itself when it is CORE alone; None for a run without CORE
    (TREND-1 alone is compared with BTC and the 2:1 mix, not with a sleeve it does not hold: that
    replay was a quarter of a TREND-1 backfill's time) or when the data cannot replay it (the
    report then leaves it out)."""
    from eternal.models import Sleeve
    from eternal.replay import BackfillError, run_backfill

    sleeves = list(dict.fromkeys(rows.equity["sleeve"]))
    days = pd.to_datetime(rows.equity["day"], utc=True)
    if sleeves == [Sleeve.CORE.value]:
        return rows.equity.set_index(days)["equity"].rename("CORE alone")
    if not replays_core_alone(rows):
        return None
    start, end = days.min().to_pydatetime(), (days.max() + timedelta(days=1)).to_pydatetime()
    capital = sum(rep.flows(rows, pd.DatetimeIndex(sorted(days.unique())))[2].values())
    try:
        alone = run_backfill(data, settings, start=start, end=end, sleeves=(Sleeve.CORE,), capital=capital,
                             progress=False, compare_breakers=False, deposits=deposits_of(rows))
    except BackfillError:
        return None
    return alone.equity["core"]
