"""The trade-list comparison of benchmarks/peers.py, on the first fills of the TREND-1 backfill
2020-06-14..2026-01-01 (ETH perp long 2020-07-27 open 311.36 -> funding exit 2020-07-28 open 322.30;
BTC perp long 2020-07-30 open 11,113.01 -> trailing stop 2020-08-02)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("peers", Path(__file__).resolve().parents[1] / "benchmarks" / "peers.py")
peers = sys.modules["peers"] = importlib.util.module_from_spec(_spec)   # its dataclasses look it up
_spec.loader.exec_module(peers)

FILLS = [
    {"timestamp": "2020-07-27T00:00:00+00:00", "symbol": "ETH/USDT:USDT", "side": "buy", "qty": "38.16",
     "price": "311.36", "reason": "entry"},
    {"timestamp": "2020-07-28T00:00:00+00:00", "symbol": "ETH/USDT:USDT", "side": "sell", "qty": "38.16",
     "price": "322.3", "reason": "funding_exit"},
    {"timestamp": "2020-07-30T00:00:00+00:00", "symbol": "BTC/USDT:USDT", "side": "buy", "qty": "1.352",
     "price": "11113.01", "reason": "entry"},
    {"timestamp": "2020-08-02T00:00:00+00:00", "symbol": "BTC/USDT:USDT", "side": "sell", "qty": "1.352",
     "price": "10609.742939482594", "reason": "trailing_stop"},
]


def test_fills_pair_into_round_trips_by_asset_and_day():
    trips = peers.round_trips(FILLS)
    assert [t.key() for t in trips] == [("ETH", "long", "2020-07-27", "2020-07-28"),
                                        ("BTC", "long", "2020-07-30", "2020-08-02")]
    assert [t.exit_reason for t in trips] == ["funding_exit", "trailing_stop"]


def test_an_exit_one_day_later_is_a_difference_and_float_noise_in_a_stop_price_is_not():
    theirs = [dict(f) for f in FILLS]
    theirs[3]["price"] = "10609.742939483853"          # the backtrader port's ATR, 1e-13 apart
    assert peers.compare_round_trips(peers.round_trips(FILLS), peers.round_trips(theirs)) == []
    theirs[1]["timestamp"] = "2020-07-29"
    lines = peers.compare_round_trips(peers.round_trips(FILLS), peers.round_trips(theirs))
    assert lines == ["only ours: ETH long 2020-07-27 2020-07-28 (funding_exit)",
                     "only backtrader: ETH long 2020-07-27 2020-07-29 (funding_exit)"]


def test_a_partial_close_is_refused_not_paired():
    partial = [dict(f) for f in FILLS[:2]]
    partial[1]["qty"] = "20.0"
    with pytest.raises(ValueError, match="does not close an open entry whole"):
        peers.round_trips(partial)
