"""The exchange a flow trades on, by mode: the paper exchange in our database, or Bybit (ccxt)."""
from __future__ import annotations

from sqlalchemy import Engine

from eternal.config import EXCHANGE_MODES, MAIN_ACCOUNT, Mode, Settings
from eternal.errors import ConfigError
from eternal.models import Sleeve, SleeveBook
from eternal.secrets import reveal


def open_exchange(s: Settings, engine: Engine, start_books: dict[Sleeve, SleeveBook] | None = None):
    """paper: the simulated venue stored in `engine` (a new one holding `start_books`); demo,
    testnet, live: `eternal.exchange.bybit.BybitExchange`, one account per key pair (a sleeve's
    sub-account; sleeves without keys, or sharing a pair, as virtual ledgers on one account), and
    the main (master) account where deposits land. Replay is the backfill's, never a flow's."""
    if s.mode == Mode.PAPER:
        from eternal.store.driver_store import open_paper_exchange

        return open_paper_exchange(engine, s.fees, start_books)
    if s.mode not in EXCHANGE_MODES:
        raise ConfigError(f"ETERNAL_MODE={s.mode.value!r}: the flows trade on paper, demo, testnet or live; "
                          "use `eternal backfill` for replay")
    from eternal.exchange.bybit import BybitExchange, make_client

    url = reveal(s.exchange.public_url) if s.exchange.public_url is not None else None
    by_key: dict[str, object] = {}         # one client per account: sleeves on one account share it

    def client_of(keys):
        key = keys.api_key.get_secret_value()
        if key not in by_key:
            by_key[key] = make_client(key, keys.api_secret.get_secret_value(), mode=s.mode.value, url=url,
                                      rate_limit_ms=s.bybit.rate_limit_ms, timeout_s=s.bybit.timeout_s)
        return by_key[key]

    main = s.bybit.accounts.get(MAIN_ACCOUNT)          # the master UID: deposits, universal transfers
    main_client = None if main is None else client_of(main)
    clients, members = {}, {}
    weights = s.weights.model_dump()
    for sleeve in Sleeve:
        keys = s.bybit.accounts.get(sleeve.weight_field)
        if keys is None and (main is None or not weights.get(sleeve.weight_field)):
            continue
        clients[sleeve] = client_of(keys or main)         # no keys of its own: a virtual ledger on main
        if keys is not None and keys.member_id:
            members[sleeve] = keys.member_id
    return BybitExchange(clients, max_slippage=s.bybit.max_slippage, on_transfer_account=members,
                         main=main_client, main_member_id=main.member_id if main else None,
                         deposit_wallet=s.bybit.deposit_wallet,
                         backoff_s=s.bybit.backoff_s, partial_fill_timeout_s=s.bybit.partial_fill_timeout_s,
                         partial_fill_poll_s=s.bybit.partial_fill_poll_s)
