"""Deposits on Bybit (issue 13): read from the main account's deposit records, booked once by
Bybit's deposit id, split at the next daily close by the deposit rules, and moved to the sleeves'
sub-accounts by universal transfers made with the main (master) account's key.

The adapter against the V5 emulator first, then the daily flow in demo mode (`test_bybit_flow.demo`:
five sub-accounts holding 100,000 USDT by the sleeves' weights, and the master account).
"""
from __future__ import annotations

import logging

import ccxt
import pytest
from sqlalchemy import select

from eternal.allocation import deposit_split
from eternal.config import load_settings
from eternal.driver import Portfolio, book_differences, clock_before
from eternal.errors import ConfigError
from eternal.exchange.bybit import BybitExchange, make_client
from eternal.models import Sleeve, SleeveBook, Transfer, split_transfer_qty, utc
from eternal.store.db import connect
from eternal.store.driver_store import SqlLedger
from eternal.store.models import DepositRow, EquitySnapshotRow, EventRow, TransferRow
from tasks.deposits import book_venue_deposits
from tests import test_bybit_flow
from tests.bybit_emulator import BybitEmulator
from tests.flow_support import count, daily, rows
from tests.test_bybit_flow import venue_books

demo = test_bybit_flow.demo            # the five demo sub-accounts, the master account, the stored market

CORE, T1 = Sleeve.CORE, Sleeve.TREND_1
LOG = logging.getLogger("test_bybit_deposits")
# Bybit V5, Get Deposit Record (on-chain): the fixture file has no capture of it
DEPOSIT_KEYS = {"id", "coin", "chain", "amount", "txID", "status", "toAddress", "tag", "depositFee", "successAt",
                "confirmations", "txIndex", "blockHash", "batchReleaseLimit", "depositType", "fromAddress",
                "taxDepositRecordsId", "taxStatus"}


# the adapter -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def emu():
    with BybitEmulator() as emu:
        yield emu


@pytest.fixture
def bybit(emu, request):
    """A master account (nothing on it) and two sub-accounts, CORE and TREND-1 (1,000 USDT each);
    no member id configured: the adapter reads each from its key."""
    tag = f"{request.node.name[:20]}-{len(emu.accounts)}"

    def client(key):
        c = make_client(key, "secret-" + key, mode="live", url=emu.url)
        c.enableRateLimit = False
        return c

    main_key = f"{tag}-main"
    emu.add_account(main_key, "secret-" + main_key, usdt=0.0, master=True)
    clients = {}
    for sleeve in (CORE, T1):
        emu.add_account(f"{tag}-{sleeve.value}", f"secret-{tag}-{sleeve.value}", usdt=1_000.0)
        clients[sleeve] = client(f"{tag}-{sleeve.value}")
    return BybitExchange(clients, main=client(main_key), backoff_s=()), main_key


def test_deposit_records_have_bybits_key_set_and_ccxt_reads_their_id_status_and_amount(emu, bybit):
    ex, main_key = bybit
    emu.deposit(main_key, 10_000.0, "dep-keys", ts="2024-01-02T12:00:00Z")
    raw = ex.main.privateGetV5AssetDepositQueryRecord({"startTime": 1704153600000})   # from 2024-01-02
    [row] = raw["result"]["rows"]
    assert set(row) == DEPOSIT_KEYS and set(raw["result"]) == {"rows", "nextPageCursor"}
    [parsed] = ex.main.fetch_deposits("USDT", 1704153600000)
    assert (parsed["id"], parsed["status"], parsed["type"], parsed["amount"], parsed["datetime"]) == \
        ("dep-keys", "ok", "deposit", 10_000.0, "2024-01-02T12:00:00.000Z")


def test_only_credited_deposits_are_read_oldest_first_over_30_day_windows_and_every_page(emu, bybit):
    ex, main_key = bybit
    emu.deposit(main_key, 10_000.0, "dep-jan", ts="2024-01-02T12:00:00Z")
    emu.deposit(main_key, 2_000.0, "dep-pending", ts="2024-01-03T12:00:00Z", status=1)     # to be confirmed
    emu.deposit(main_key, 3_000.0, "dep-failed", ts="2024-01-04T12:00:00Z", status=4)
    for n in range(55):                        # more than one page (50) on one day
        emu.deposit(main_key, 1.0 + n, f"dep-small-{n:02d}", ts=f"2024-01-05T{n // 60:02d}:{n % 60:02d}:00Z")
    emu.deposit(main_key, 0.5, "dep-btc", ts="2024-02-20T12:00:00Z", coin="BTC")
    emu.deposit(main_key, 4_000.0, "dep-march", ts="2024-03-15T12:00:00Z")
    emu.deposit(main_key, 5_000.0, "dep-later", ts="2024-04-02T12:00:00Z")                # after `until`
    found = ex.deposits_since(utc("2024-01-01"), utc("2024-04-01"))       # 91 days: four windows
    assert [d.deposit_id for d in found] == ["dep-jan", *(f"dep-small-{n:02d}" for n in range(55)), "dep-btc",
                                             "dep-march"]
    assert (found[0].ts, found[0].coin, found[0].amount) == (utc("2024-01-02T12:00:00Z"), "USDT", 10_000.0)
    assert (found[-2].coin, found[-2].amount) == ("BTC", 0.5)
    windows = [r.params for r in emu.requests if r.path == "/v5/asset/deposit/query-record"][-5:]
    assert all(int(w["endTime"]) - int(w["startTime"]) < 30 * 86_400_000 for w in windows)


def test_a_pending_or_failed_deposit_is_not_booked_and_one_credited_later_is_booked_once(emu, bybit, tmp_path):
    ex, main_key = bybit
    ledger = SqlLedger(connect(f"sqlite:///{tmp_path / 'ledger.db'}"))
    p = Portfolio({CORE: SleeveBook(CORE, 1_000.0), T1: SleeveBook(T1, 1_000.0)}, clock=clock_before(utc("2024-01-01")))
    ledger.initialise(p, 2_000.0, {CORE: 0.5, T1: 0.5}, utc("2024-01-01"))
    emu.deposit(main_key, 2_000.0, "dep-pending", ts="2024-01-02T10:00:00Z", status=2)     # processing
    emu.deposit(main_key, 3_000.0, "dep-failed", ts="2024-01-02T11:00:00Z", status=4)
    emu.deposit(main_key, 900.0, "dep-before", ts="2023-12-31T11:00:00Z")     # before the ledger opened
    assert book_venue_deposits(ex, ledger, p, utc("2024-01-03"), LOG) == []
    assert ledger.load().deposits == [] and emu.account(main_key).fund == {"USDT": 900.0}
    emu.set_deposit_status(main_key, "dep-pending", 3, ts="2024-01-03T09:00:00Z")        # credited now
    emu.set_deposit_status(main_key, "dep-failed", 4, ts="2024-01-03T09:30:00Z")
    assert book_venue_deposits(ex, ledger, p, utc("2024-01-03T12:00"), LOG) == ["bybit-deposit dep-pending"]
    assert book_venue_deposits(ex, ledger, p, utc("2024-01-03T12:00"), LOG) == []         # read again: nothing
    assert book_venue_deposits(ex, ledger, p, utc("2024-01-04T12:00"), LOG) == []
    assert ledger.load().deposits == [{"ts": "2024-01-03T09:00:00+00:00", "usdt": 2_000.0,
                                       "reference": "bybit-deposit dep-pending"}]


def test_transfers_are_universal_transfers_made_with_the_main_key_once_per_key(emu, bybit):
    """A deposit's share moves from the main account's Funding wallet, a rebalance from one
    sub-account to another; a sub-account's own key may not do the latter (Bybit's rule)."""
    ex, main_key = bybit
    emu.deposit(main_key, 10_000.0, "dep-split", ts="2024-01-02T12:00:00Z")
    now = utc("2024-01-03")
    core, t1 = (emu.account(ex.clients[s].apiKey) for s in (CORE, T1))
    ex.transfer(Transfer(now, None, CORE, "USDT", 6_000.0, "deposit"), "transfer|d|0")
    ex.transfer(Transfer(now, None, T1, "USDT", 4_000.0, "deposit"), "transfer|d|1")
    ex.transfer(Transfer(now, CORE, T1, "USDT", 250.0, "rebalance"), "transfer|d|2")
    for n, (src, dst, qty) in enumerate([(None, CORE, 6_000.0), (None, T1, 4_000.0), (CORE, T1, 250.0)]):
        ex.transfer(Transfer(now, src, dst, "USDT", qty, "again"), f"transfer|d|{n}")        # the same keys
    assert emu.account(main_key).fund == {"USDT": 0.0}
    assert (core.balances["USDT"], t1.balances["USDT"]) == (6_750.0, 5_250.0)
    made = list(emu.account(main_key).universal.values())
    assert [(t["fromMemberId"], t["toMemberId"], t["fromAccountType"], t["amount"]) for t in made] == [
        (str(emu.account(main_key).uid), str(core.uid), "FUND", "6000"),
        (str(emu.account(main_key).uid), str(t1.uid), "FUND", "4000"),
        (str(core.uid), str(t1.uid), "UNIFIED", "250")]
    assert core.universal == {} and t1.universal == {}                  # nothing made with a sleeve's key
    with pytest.raises(ccxt.PermissionDenied):
        ex.clients[CORE].privatePostV5AssetTransferUniversalTransfer({
            "transferId": "own-key", "coin": "USDT", "amount": "1", "fromMemberId": core.uid,
            "toMemberId": t1.uid, "fromAccountType": "UNIFIED", "toAccountType": "UNIFIED"})
    # the answer lost after Bybit made it, then the venue refusing the reused id: looked up, made once
    emu.fault("/v5/asset/transfer/universal-transfer", drop_after_accept=True)
    ex.transfer(Transfer(now, T1, CORE, "USDT", 100.0, "rebalance"), "transfer|d|3")
    ex.transfer(Transfer(now, T1, CORE, "USDT", 100.0, "rebalance"), "transfer|d|3")
    assert (core.balances["USDT"], t1.balances["USDT"]) == (6_850.0, 5_150.0)
    # sent: the three first, the own-key attempt, the one whose answer was lost; never a repeat
    assert emu.counts["/v5/asset/transfer/universal-transfer"] == 5
    without_main = BybitExchange(ex.clients)
    with pytest.raises(ConfigError, match="ETERNAL_BYBIT__KEYS__MAIN__API_KEY"):
        without_main.transfer(Transfer(now, CORE, T1, "USDT", 1.0, "rebalance"), "transfer|e|0")


# the daily flow in demo mode -----------------------------------------------------------------------
def test_a_bybit_deposit_is_booked_once_by_its_id_split_at_the_next_close_and_moved_to_the_sleeves(demo):
    """10,000 USDT credited at the main account on 2024-01-02 12:00 (between the runs deciding on the
    closes of 2024-01-01 and 2024-01-02), with a pending one, a failed one and a BTC one: the USDT
    deposit is booked once under its id, split at the close of 2024-01-02 by the deposit rules on the
    sleeves' equity at that close, and moved from the main account by universal transfers; the
    ledger equals every account. The same slot again and the next day book nothing twice."""
    emu, engine = demo
    main = emu.account("demo-main")
    emu.set_prices_from_candles("2024-01-01")
    daily("2024-01-02T00:05:00Z")
    emu.deposit("demo-main", 10_000.0, "dep-10k", ts="2024-01-02T12:00:00Z")
    emu.deposit("demo-main", 2_500.0, "dep-pending", ts="2024-01-02T13:00:00Z", status=1)
    emu.deposit("demo-main", 7_000.0, "dep-failed", ts="2024-01-02T14:00:00Z", status=4)
    emu.deposit("demo-main", 0.1, "dep-btc", ts="2024-01-02T15:00:00Z", coin="BTC")
    emu.set_prices_from_candles("2024-01-02")
    second = daily("2024-01-03T00:05:00Z")
    assert second["halted"] == {}

    # booked once, under Bybit's id; the others not
    assert rows(engine, DepositRow.note, DepositRow.amount, where=[DepositRow.note.like("bybit-deposit%")]) == \
        [("bybit-deposit dep-10k", 10_000.0)]
    assert SqlLedger(engine).load().deposits == []                     # taken at the close of 2024-01-02
    # the split: the deposit rules on the equity the close found (its equity rows less its transfers)
    moved = rows(engine, TransferRow.ts, TransferRow.from_sleeve, TransferRow.to_sleeve, TransferRow.qty,
                 where=[TransferRow.reason == "deposit of 10,000.00 USDT"])
    split = {Sleeve(to): qty for _, frm, to, qty in moved if frm is None}
    [close_ts] = {ts for ts, *_ in moved}
    assert len(moved) == len(split) and sum(split.values()) == pytest.approx(10_000.0, abs=1e-9)
    inflow: dict[Sleeve, float] = {}
    for frm, to, qty in rows(engine, TransferRow.from_sleeve, TransferRow.to_sleeve, TransferRow.qty,
                             where=[TransferRow.ts == close_ts]):
        inflow[Sleeve(to)] = inflow.get(Sleeve(to), 0.0) + qty
        if frm is not None:
            inflow[Sleeve(frm)] = inflow.get(Sleeve(frm), 0.0) - qty
    after = dict(rows(engine, EquitySnapshotRow.sleeve, EquitySnapshotRow.equity,
                      where=[EquitySnapshotRow.day == utc("2024-01-02")]))
    seen = {sl: after[sl.value] - inflow.get(sl, 0.0) for sl in Sleeve}
    # in the 8 decimals a venue moves, the rest of the rounding to the largest share
    expected = split_transfer_qty(10_000.0, deposit_split(10_000.0, seen, load_settings().weights.by_sleeve()))
    assert split == pytest.approx(expected, rel=1e-12) and sum(split.values()) == pytest.approx(10_000.0, abs=1e-9)
    # in numbers: CORE's resting tranche left it at 60,000 of 109,998.72 (54.5 %, the most under its
    # 60 %): it is topped up first by 5,999.23, the other 4,000.77 go by the targets: CORE 8,399.69,
    # TREND-1 and FUNDING 600.12 each, TREND-2 and TACTICAL 200.04 each
    total = sum(seen.values()) + 10_000.0
    first = 0.60 * total - seen[Sleeve.CORE]
    rest = 10_000.0 - first
    assert (round(first, 2), round(rest, 2)) == (5_999.23, 4_000.77)
    assert split == pytest.approx({Sleeve.CORE: first + 0.60 * rest, Sleeve.TREND_1: 0.15 * rest,
                                   Sleeve.TREND_2: 0.05 * rest, Sleeve.FUNDING: 0.15 * rest,
                                   Sleeve.TACTICAL: 0.05 * rest}, abs=5e-8)       # 8 decimals each
    [event] = [data for kind, data in rows(engine, EventRow.kind, EventRow.data) if kind == "deposit"]
    assert event["split"] == pytest.approx({sl.value: v for sl, v in split.items()})
    # at Bybit: each share one universal transfer from the main account's Funding wallet
    uid = {a.uid: a.api_key for a in emu.accounts.values()}
    made = {uid[int(t["toMemberId"])]: float(t["amount"]) for t in main.universal.values()}
    assert made == pytest.approx({f"demo-{sl.value}": v for sl, v in split.items()}, abs=1e-8)
    assert {t["fromAccountType"] for t in main.universal.values()} == {"FUND"}
    assert main.fund["USDT"] == pytest.approx(0.0, abs=1e-6) and main.fund["BTC"] == 0.1
    p = SqlLedger(engine).load()
    theirs = venue_books(load_settings())
    assert {sl.value: book_differences(p.books[sl], theirs[sl]) for sl in theirs} == {sl.value: [] for sl in theirs}

    def counts():
        return (count(engine, DepositRow, DepositRow.note.like("bybit-deposit%")), len(main.universal),
                count(engine, EventRow, EventRow.kind == "deposit_booked"),
                count(engine, EventRow, EventRow.kind == "deposit_ignored"),
                count(engine, EventRow, EventRow.kind == "deposit"))

    assert counts() == (1, 5, 1, 1, 1)
    daily("2024-01-03T00:10:00Z")                  # the same slot again
    assert counts() == (1, 5, 1, 1, 1)
    emu.set_prices_from_candles("2024-01-03")
    daily("2024-01-04T00:05:00Z")                  # the next day
    assert counts() == (1, 5, 1, 1, 1)
    p = SqlLedger(engine).load()
    theirs = venue_books(load_settings())
    assert {sl.value: book_differences(p.books[sl], theirs[sl]) for sl in theirs} == {sl.value: [] for sl in theirs}
    with engine.connect() as conn:
        ignored = conn.execute(select(EventRow.level, EventRow.message).where(EventRow.kind == "deposit_ignored")).one()
    assert ignored.level == "warning" and ignored.message.startswith("bybit-deposit dep-btc: 0.1 BTC")
    # the operator's deposit-intake flow is refused in exchange modes: the run above booked it from Bybit
    from eternal.errors import ConfigError
    from flows.deposit_intake import deposit_intake

    with pytest.raises(ConfigError, match="read from Bybit's deposit history"):
        deposit_intake(amount_usdt=10_000.0, reference="dep-10k by hand")
    assert counts() == (1, 5, 1, 1, 1)


def test_a_transfer_of_a_sleeves_whole_cash_is_sent_in_8_decimals_down_and_goes_through(emu, bybit):
    """Chaos found it: the allocation moved all of CORE's cash, 27.93946374608 USDT in our ledger,
    while Bybit held 27.939463744 (its 8 decimals and our floats part at the ninth); sent rounded to
    the nearest, "27.93946375", Bybit refused it for insufficient balance, and every later run
    finished the stored plan first and failed the same way. A transfer's qty is now held to 8
    decimals, down (`models.transfer_qty`): the ledger books what Bybit moves."""
    ex, _ = bybit
    core, t1 = (emu.account(ex.clients[s].apiKey) for s in (CORE, T1))
    core.balances["USDT"] = 27.939463744
    move = Transfer(utc("2024-03-14"), CORE, T1, "USDT", 27.93946374608, "rebalance")
    assert move.qty == 27.93946374
    ex.transfer(move, "transfer|2024-03-14T00:00:00|0|0")
    [made] = emu.account(ex.main.apiKey).universal.values()
    assert made["amount"] == "27.93946374"
    assert core.balances["USDT"] == pytest.approx(4e-9, abs=1e-12) and t1.balances["USDT"] == pytest.approx(1_027.93946374)
