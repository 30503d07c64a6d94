"""The Bybit journal (fills and funding since our cursor) booked once each, when Bybit lists an
execution late (issue 13, chaos: 0 lost fills, 0 lost funding payments).

The journal's cursor is a number: the entry's time in ms x 1000 + its rank within that ms. Two
ways an entry could be skipped or booked twice, each shown here on one account of virtual
sleeves at the prices of 2024-01-01 (BTC perp 44,230.2):
* Bybit lists an execution a moment after it happened, after a later one was already booked:
  its time is before our cursor;
* an entry Bybit lists late in the cursor's own ms, whose id sorts before the booked one's as
  text ("e10000000001" < "e1000000045") but not as a number: ranked by the text, it took the
  booked entry's rank (skipped) and pushed that one above the cursor (booked again).
"""
from __future__ import annotations

import pytest

from eternal.config import load_settings
from eternal.driver import Batch, Driver, Portfolio
from eternal.exchange.bybit import BybitExchange
from eternal.models import Market, OrderIntent, OrderType, Side, Sleeve, SleeveBook
from eternal.models import utc as as_utc
from eternal.replay import MemoryLedger
from tests.bybit_emulator import BybitEmulator, venue_on_one_account

KEY, SECRET = "journal-main", "secret-journal-main-0123456789"
T1, F = Sleeve.TREND_1, Sleeve.FUNDING
BTC = "BTC/USDT:USDT"


class Ledger(MemoryLedger):
    """The backfill's memory ledger with the stored ledger's look-up of booked trades."""

    def known_trades(self, trade_ids: set[str]) -> set[str]:
        return trade_ids & {f.trade_id for f in self.fills}


@pytest.fixture
def venue():
    with BybitEmulator() as emu:
        ex = venue_on_one_account(emu, KEY, SECRET, (T1, F))
        ex.use_ledger({}, {})
        for sleeve in (T1, F):
            ex.set_leverage(sleeve, BTC, 1.0)
        yield emu, ex


def order(ex: BybitExchange, cid: str, sleeve: Sleeve, side: Side, qty: float) -> None:
    ex.place_order(cid, OrderIntent(sleeve, BTC, Market.PERP, side, qty, OrderType.MARKET, "t", cid,
                                    reduce_only=False), as_utc("2024-01-02"))


def sync(driver: Driver, p: Portfolio, ledger: Ledger) -> None:
    batch = Batch(None)
    driver.sync(p, batch)
    ledger.commit(p, batch)


def qty(p: Portfolio, sleeve: Sleeve) -> float:
    pos = p.books[sleeve].perps.get(BTC)
    return pos.qty if pos is not None else 0.0


def test_an_execution_bybit_lists_late_is_booked_once_before_or_at_the_cursor(venue):
    """TREND-1 buys 0.1 and FUNDING sells 0.04 (booked: the cursor at FUNDING's fill). TREND-1's
    next buy of 0.05 is listed by Bybit with a time 2 ms before the cursor's: booked (TREND-1
    +0.15), and on every later sync not again. Then FUNDING's sell of 0.01 is listed in the
    cursor's ms under an id longer by one digit: booked once (FUNDING -0.05), the entry the cursor
    stands on not again. The ledger's net position is Bybit's at every step: +0.10."""
    emu, ex = venue
    ledger = Ledger()
    p = Portfolio({s: SleeveBook(s, 10_000.0) for s in (T1, F)})
    ledger.initialise(p, 20_000.0, {}, as_utc("2024-01-02"))
    driver = Driver(None, ex, ledger, load_settings(), (T1, F), orchestrated=False)
    acct = emu.account(KEY)

    order(ex, "t1-a", T1, Side.BUY, 0.1)
    order(ex, "fu-b", F, Side.SELL, 0.04)
    sync(driver, p, ledger)
    assert (qty(p, T1), qty(p, F)) == pytest.approx((0.1, -0.04))
    cursor = p.journal_seq
    last = next(e for e in reversed(acct.executions) if e["execType"] == "Trade")
    assert cursor // 1000 == last["execTime"]

    order(ex, "t1-c", T1, Side.BUY, 0.05)              # Bybit lists it late: its time is before the cursor
    late = next(e for e in reversed(acct.executions) if e["execType"] == "Trade")
    late["execTime"] = last["execTime"] - 2
    sync(driver, p, ledger)
    assert qty(p, T1) == pytest.approx(0.15)
    assert p.journal_seq >= cursor                     # the cursor never goes back
    sync(driver, p, ledger)
    assert qty(p, T1) == pytest.approx(0.15)           # read again, not booked again

    order(ex, "fu-d", F, Side.SELL, 0.01)              # late, in the cursor's ms, a longer id
    same_ms = next(e for e in reversed(acct.executions) if e["execType"] == "Trade")
    same_ms["execTime"] = p.journal_seq // 1000
    same_ms["execId"] = "e1" + "0" * (len(same_ms["execId"]) - 2) + "1"
    assert same_ms["execId"] < last["execId"]          # before the booked one as text, after it as a number
    sync(driver, p, ledger)
    sync(driver, p, ledger)
    assert (qty(p, T1), qty(p, F)) == pytest.approx((0.15, -0.05))
    assert sorted(f.client_order_id for f in ledger.fills) == ["fu-b", "fu-d", "t1-a", "t1-c"]
    assert acct.positions["BTCUSDT"].size == pytest.approx(qty(p, T1) + qty(p, F))
