"""Bybit V5 emulator for tests (issue 13): see server.py."""
from .server import BybitEmulator, point_at

__all__ = ["BybitEmulator", "point_at", "venue_on_one_account"]


def venue_on_one_account(emu: BybitEmulator, key: str, secret: str, sleeves, usdt: float = 20_000.0):
    """Our adapter with `sleeves` as virtual ledgers on one new master account of `emu` holding
    `usdt` (prices of 2024-01-01), its rate limiter off."""
    from eternal.exchange.bybit import BybitExchange, make_client

    emu.set_prices_from_candles("2024-01-01")
    emu.add_account(key, secret, usdt=usdt, master=True)
    client = make_client(key, secret, mode="live", url=emu.url)
    client.enableRateLimit = False
    return BybitExchange({s: client for s in sleeves}, main=client)
