"""Settings: the spec's defaults, ETERNAL_ env vars (nested with __) and .env, and every invalid
setting refused with a ConfigError naming the variable and the bad value, secrets never shown.

conftest strips ETERNAL_* from the environment and runs each test in its own empty cwd.
"""
from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from eternal.config import Mode, Settings, SettingsModel, load_settings
from eternal.errors import ConfigError
from eternal.secrets import SecretUrl

SECRET = "s3cret-value-7f2a"


def _config_error() -> str:
    """The message of the ConfigError load_settings raises under the test's environment."""
    with pytest.raises(ConfigError) as info:
        load_settings()
    return str(info.value)


# defaults: the spec's numbers ---------------------------------------------------------------
def test_defaults_are_paper_mode_on_local_sqlite_with_100k_capital():
    s = load_settings()
    assert s.mode is Mode.PAPER
    assert s.database_url.get_secret_value() == "sqlite:///var/eternal.db"
    assert s.initial_capital == 100_000.0
    assert s.live_confirm == ""
    assert s.exchange.api_key is None and s.exchange.api_secret is None


def test_default_sleeve_weights_are_60_15_5_15_5_and_sum_to_one():
    w = load_settings().weights
    assert (w.core, w.trend_1, w.trend_2, w.funding, w.tactical) == (0.60, 0.15, 0.05, 0.15, 0.05)
    assert sum(w.model_dump().values()) == pytest.approx(1.0)


def test_default_core_params_follow_the_spec():
    core = load_settings().core
    # BTC:ETH 2:1 of the 95 % invested after the 5 % cash buffer
    assert core.targets == pytest.approx({"BTC": 0.95 * 2 / 3, "ETH": 0.95 / 3})
    assert core.targets["BTC"] == pytest.approx(0.6333, abs=1e-4)
    assert core.targets["ETH"] == pytest.approx(0.3167, abs=1e-4)
    assert core.cash_buffer == 0.05
    assert core.tranches == 4
    assert core.tranche_interval_days == 7
    assert core.drift_threshold == 0.10
    assert core.ath_pause_drawdown == 0.70
    assert core.staking_min_apy == 0.02
    assert core.staking_apy == 0.0
    assert core.quarterly_rebalance is True


def test_trend_2_uses_sma_20_100_where_trend_1_uses_50_200():
    s = load_settings()
    assert (s.trend_1.fast_sma, s.trend_1.slow_sma) == (50, 200)
    assert (s.trend_2.fast_sma, s.trend_2.slow_sma) == (20, 100)
    # everything else of TREND-2 is TREND-1's rule set
    assert s.trend_2.model_dump(exclude={"fast_sma", "slow_sma"}) == s.trend_1.model_dump(
        exclude={"fast_sma", "slow_sma"})


def test_default_spot_fees_are_ten_basis_points():
    fees = load_settings().fees
    assert fees.spot_maker == 0.001 and fees.spot_taker == 0.001


def test_settings_are_frozen():
    s = load_settings()
    with pytest.raises(ValidationError, match="frozen"):
        s.mode = Mode.LIVE
    with pytest.raises(ValidationError, match="frozen"):
        s.core.tranches = 8
    assert s.mode is Mode.PAPER and s.core.tranches == 4


# sources: ETERNAL_ prefix, __ nesting, .env -------------------------------------------------
def test_eternal_prefixed_env_vars_override_top_level_defaults(monkeypatch):
    monkeypatch.setenv("ETERNAL_MODE", "replay")
    monkeypatch.setenv("ETERNAL_INITIAL_CAPITAL", "2500.5")
    monkeypatch.setenv("ETERNAL_DATABASE_URL", "sqlite:///elsewhere.db")
    s = load_settings()
    assert (s.mode, s.initial_capital, s.database_url.get_secret_value()) == (
        Mode.REPLAY, 2500.5, "sqlite:///elsewhere.db")


def test_unprefixed_env_vars_are_ignored(monkeypatch):
    monkeypatch.setenv("MODE", "live")
    monkeypatch.setenv("INITIAL_CAPITAL", "1")
    s = load_settings()
    assert s.mode is Mode.PAPER and s.initial_capital == 100_000.0


def test_double_underscore_reaches_a_nested_parameter_and_keeps_its_siblings(monkeypatch):
    monkeypatch.setenv("ETERNAL_CORE__DRIFT_THRESHOLD", "0.2")
    monkeypatch.setenv("ETERNAL_TREND_2__FAST_SMA", "10")
    s = load_settings()
    assert s.core.drift_threshold == 0.2
    assert s.core.tranches == 4 and s.core.cash_buffer == 0.05  # untouched siblings keep defaults
    assert (s.trend_2.fast_sma, s.trend_2.slow_sma) == (10, 100)


def test_overriding_one_trend_2_rule_keeps_its_sma_20_100(monkeypatch):
    monkeypatch.setenv("ETERNAL_TREND_2__ADX_ENTRY", "30")
    s = load_settings()
    assert s.trend_2.adx_entry == 30.0
    assert (s.trend_2.fast_sma, s.trend_2.slow_sma) == (20, 100)
    assert (s.trend_1.fast_sma, s.trend_1.slow_sma, s.trend_1.adx_entry) == (50, 200, 25.0)


def test_a_group_can_be_set_as_json(monkeypatch):
    monkeypatch.setenv("ETERNAL_WEIGHTS", '{"core": 0.5, "trend_1": 0.25}')
    w = load_settings().weights
    assert (w.core, w.trend_1, w.trend_2, w.funding, w.tactical) == (0.5, 0.25, 0.05, 0.15, 0.05)


def test_dot_env_in_the_working_directory_is_read(tmp_path):
    (tmp_path / ".env").write_text("ETERNAL_CORE__TRANCHES=8\nETERNAL_INITIAL_CAPITAL=5000\n")
    s = load_settings()
    assert s.core.tranches == 8 and s.initial_capital == 5000.0


def test_env_var_wins_over_dot_env(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("ETERNAL_CORE__TRANCHES=8\n")
    monkeypatch.setenv("ETERNAL_CORE__TRANCHES", "2")
    assert load_settings().core.tranches == 2


def test_invalid_value_in_dot_env_is_refused_naming_the_variable(tmp_path):
    (tmp_path / ".env").write_text("ETERNAL_CORE__TRANCHES=0\n")
    message = _config_error()
    assert "ETERNAL_CORE__TRANCHES='0'" in message


# invalid settings: ConfigError naming the variable and the value ---------------------------
def test_weights_not_summing_to_one_stop_the_program_naming_the_field(monkeypatch):
    monkeypatch.setenv("ETERNAL_WEIGHTS__CORE", "0.9")
    message = _config_error()
    assert "ETERNAL_WEIGHTS__CORE='0.9'" in message
    assert "must sum to 1, got 1.3" in message
    assert "nothing was run" in message


def test_weights_given_as_json_not_summing_to_one_name_each_weight(monkeypatch):
    monkeypatch.setenv("ETERNAL_WEIGHTS", '{"core": 0.7, "funding": 0.2}')
    message = _config_error()
    assert "ETERNAL_WEIGHTS__CORE=0.7" in message and "ETERNAL_WEIGHTS__FUNDING=0.2" in message
    assert "got 1.15" in message


@pytest.mark.parametrize("value, rule", [("1.5", "less than or equal to 1"),
                                         ("-0.1", "greater than or equal to 0")])
def test_fraction_outside_zero_one_is_refused_naming_variable_and_value(monkeypatch, value, rule):
    monkeypatch.setenv("ETERNAL_CORE__CASH_BUFFER", value)
    message = _config_error()
    assert f"ETERNAL_CORE__CASH_BUFFER='{value}'" in message
    assert rule in message


@pytest.mark.parametrize("value", ["0", "1"])
def test_fraction_bounds_zero_and_one_are_accepted(monkeypatch, value):
    monkeypatch.setenv("ETERNAL_CORE__DRIFT_THRESHOLD", value)
    assert load_settings().core.drift_threshold == float(value)


def test_unknown_mode_is_refused_listing_the_known_modes(monkeypatch):
    monkeypatch.setenv("ETERNAL_MODE", "yolo")
    message = _config_error()
    assert "ETERNAL_MODE='yolo'" in message
    for mode in ("paper", "replay", "demo", "testnet", "live"):
        assert f"'{mode}'" in message


def test_every_invalid_variable_is_reported_at_once(monkeypatch):
    monkeypatch.setenv("ETERNAL_MODE", "yolo")
    monkeypatch.setenv("ETERNAL_INITIAL_CAPITAL", "-5")
    message = _config_error()
    assert "ETERNAL_MODE='yolo'" in message and "ETERNAL_INITIAL_CAPITAL='-5'" in message


@pytest.mark.parametrize("confirm", [None, "no", "YES "])
def test_live_mode_without_live_confirm_yes_is_refused(monkeypatch, confirm):
    monkeypatch.setenv("ETERNAL_MODE", "live")
    if confirm is not None:
        monkeypatch.setenv("ETERNAL_LIVE_CONFIRM", confirm)
    message = _config_error()
    assert "ETERNAL_MODE='live'" in message and "ETERNAL_LIVE_CONFIRM=yes" in message
    assert f"ETERNAL_LIVE_CONFIRM={confirm or ''!r}" in message


def test_live_mode_with_live_confirm_yes_is_accepted(monkeypatch):
    monkeypatch.setenv("ETERNAL_MODE", "live")
    monkeypatch.setenv("ETERNAL_LIVE_CONFIRM", "yes")
    for sleeve in ("CORE", "TREND_1", "TREND_2", "FUNDING", "TACTICAL", "MAIN"):   # per sleeve, and the master
        monkeypatch.setenv(f"ETERNAL_BYBIT__KEYS__{sleeve}__API_KEY", f"key-{sleeve}")
        monkeypatch.setenv(f"ETERNAL_BYBIT__KEYS__{sleeve}__API_SECRET", f"secret-{sleeve}")
    assert load_settings().mode is Mode.LIVE


def test_exchange_mode_with_sub_accounts_but_no_main_account_is_refused_in_one_line(monkeypatch):
    """Deposits and rebalancing move money between the sub-accounts: Bybit's universal transfer
    takes the master account's key only."""
    monkeypatch.setenv("ETERNAL_MODE", "demo")
    for sleeve in ("CORE", "TREND_1", "TREND_2", "FUNDING", "TACTICAL"):
        monkeypatch.setenv(f"ETERNAL_BYBIT__KEYS__{sleeve}__API_KEY", f"key-{sleeve}")
        monkeypatch.setenv(f"ETERNAL_BYBIT__KEYS__{sleeve}__API_SECRET", f"s3cret-{sleeve}")
    message = _config_error()
    [line] = message.splitlines()[1:]
    assert "with 5 Bybit sub-accounts" in line and "ETERNAL_BYBIT__KEYS__MAIN__API_KEY" in line
    assert "s3cret" not in message
    monkeypatch.setenv("ETERNAL_BYBIT__KEYS__MAIN__API_KEY", "key-main")
    monkeypatch.setenv("ETERNAL_BYBIT__KEYS__MAIN__API_SECRET", "s3cret-main")
    monkeypatch.setenv("ETERNAL_BYBIT__KEYS__MAIN__MEMBER_ID", "100200")
    accounts = load_settings().bybit.accounts
    assert accounts["main"].member_id == "100200" and set(accounts) == {"core", "trend_1", "trend_2", "funding",
                                                                         "tactical", "main"}


def test_one_api_key_with_two_secrets_is_refused_naming_the_sleeves(monkeypatch):
    """A user pointed TREND_1 at CORE's sub-account with TREND_1's old secret: which account is
    meant cannot be known. (The same key pair for two sleeves is one account of virtual ledgers,
    reconciled as one: tests/test_bybit_virtual.py.)"""
    monkeypatch.setenv("ETERNAL_MODE", "demo")
    for sleeve in ("CORE", "TREND_1", "TREND_2", "FUNDING", "TACTICAL", "MAIN"):
        key = "key-CORE" if sleeve == "TREND_1" else f"key-{sleeve}"
        monkeypatch.setenv(f"ETERNAL_BYBIT__KEYS__{sleeve}__API_KEY", key)
        monkeypatch.setenv(f"ETERNAL_BYBIT__KEYS__{sleeve}__API_SECRET", f"s3cret-{sleeve}")
    message = _config_error()
    [line] = message.splitlines()[1:]
    assert "core and trend_1 have the same API key with different secrets" in line and "key-CORE" not in message
    assert "s3cret" not in message


def test_demo_mode_without_a_key_pair_per_sleeve_is_refused_naming_the_variables(monkeypatch):
    monkeypatch.setenv("ETERNAL_MODE", "demo")
    monkeypatch.setenv("ETERNAL_BYBIT__KEYS__CORE__API_KEY", "k")
    monkeypatch.setenv("ETERNAL_BYBIT__KEYS__CORE__API_SECRET", "s3cret-value")
    message = _config_error()
    assert "no key pair for trend_1, trend_2, funding, tactical" in message
    assert "ETERNAL_BYBIT__KEYS__TREND_1__API_KEY" in message and "s3cret-value" not in message


def test_group_variable_that_is_not_json_is_a_config_error_naming_it(monkeypatch):
    monkeypatch.setenv("ETERNAL_WEIGHTS", "core=0.6")
    message = _config_error()
    assert "ETERNAL_WEIGHTS='core=0.6'" in message and "cannot be parsed" in message


def test_nested_list_variable_that_is_not_json_is_a_config_error_naming_it(monkeypatch):
    monkeypatch.setenv("ETERNAL_EXECUTION__RETRY_DELAYS_S", "[1, 2")
    message = _config_error()
    assert "ETERNAL_EXECUTION__RETRY_DELAYS_S='[1, 2'" in message


# secrets ------------------------------------------------------------------------------------
def test_api_secret_from_env_is_a_secret_str_hidden_in_repr(monkeypatch):
    monkeypatch.setenv("ETERNAL_EXCHANGE__API_KEY", "key-abc-123")
    monkeypatch.setenv("ETERNAL_EXCHANGE__API_SECRET", SECRET)
    s = load_settings()
    assert isinstance(s.exchange.api_secret, SecretStr) and isinstance(s.exchange.api_key, SecretStr)
    assert s.exchange.api_secret.get_secret_value() == SECRET
    assert s.exchange.api_key.get_secret_value() == "key-abc-123"
    assert SECRET not in repr(s) and SECRET not in str(s)


def test_redacted_settings_never_contain_the_secret(monkeypatch):
    monkeypatch.setenv("ETERNAL_EXCHANGE__API_KEY", "key-abc-123")
    monkeypatch.setenv("ETERNAL_EXCHANGE__API_SECRET", SECRET)
    monkeypatch.setenv("ETERNAL_CORE__DRIFT_THRESHOLD", "0.2")
    data = load_settings().redacted()
    assert data["exchange"]["api_secret"] == "**********"
    assert data["exchange"]["api_key"] == "**********"
    assert SECRET not in repr(data) and "key-abc-123" not in repr(data)
    # the rest is the effective settings, as plain data
    assert data["core"]["drift_threshold"] == 0.2 and data["mode"] == "paper"
    assert data["weights"] == {"core": 0.6, "trend_1": 0.15, "trend_2": 0.05, "funding": 0.15,
                               "tactical": 0.05}


def test_config_error_never_shows_a_secret(monkeypatch):
    # a non-string secret in the JSON group fails validation on the secret field itself
    monkeypatch.setenv("ETERNAL_EXCHANGE", '{"api_key": 987654321, "api_secret": 123456789}')
    message = _config_error()
    assert "ETERNAL_EXCHANGE__API_SECRET" in message and "ETERNAL_EXCHANGE__API_KEY" in message
    assert "123456789" not in message and "987654321" not in message


def test_settings_class_reads_the_same_sources_as_load_settings(monkeypatch):
    monkeypatch.setenv("ETERNAL_CORE__TRANCHES", "6")
    assert Settings().core.tranches == load_settings().core.tranches == 6


def test_malformed_exchange_json_names_the_variable_but_never_echoes_its_secret(monkeypatch):
    # not JSON at all: nothing can tell the secret from the rest, so the value is not shown
    monkeypatch.setenv("ETERNAL_EXCHANGE", f'{{"api_key": "key-abc-123", "api_secret": "{SECRET}",')
    message = _config_error()
    assert message.count("\n") == 1 and "ETERNAL_EXCHANGE=<not shown" in message and "cannot be parsed" in message
    assert SECRET not in message and "key-abc-123" not in message


def test_malformed_data_json_never_echoes_the_fear_greed_url(monkeypatch):
    monkeypatch.setenv("ETERNAL_DATA", '{"fear_greed_url": "https://u:pw-9f3e@proxy.example/fng", ')
    message = _config_error()
    assert "ETERNAL_DATA=<not shown" in message and "pw-9f3e" not in message


# settings that can carry a credential -------------------------------------------------------
URLS = {"ETERNAL_DATABASE_URL": ("postgresql+psycopg2://eternal:pw-db-1@db.example:5432/eternal",
                                 "postgresql+psycopg2://***:***@db.example:5432/eternal"),
        "ETERNAL_BACKFILL_DATABASE_URL": ("postgresql://u:pw-bf-2@db.example/replay",
                                          "postgresql://***:***@db.example/replay"),
        "ETERNAL_DATA__FEAR_GREED_URL": ("https://proxy.example/fng/?limit=0&token=tok-fg-3",
                                         "https://proxy.example/fng/?limit=0&token=***"),
        "ETERNAL_EXCHANGE__PUBLIC_URL": ("https://me:pw-bb-4@bybit-proxy.example/?apikey=tok-bb-5",
                                         "https://***:***@bybit-proxy.example/?apikey=***")}


def test_every_url_setting_is_a_secret_url_shown_with_its_credentials_masked(monkeypatch):
    for var, (url, _) in URLS.items():
        monkeypatch.setenv(var, url)
    s = load_settings()
    values = {"ETERNAL_DATABASE_URL": s.database_url, "ETERNAL_BACKFILL_DATABASE_URL": s.backfill_database_url,
              "ETERNAL_DATA__FEAR_GREED_URL": s.data.fear_greed_url,
              "ETERNAL_EXCHANGE__PUBLIC_URL": s.exchange.public_url}
    for var, (url, masked) in URLS.items():
        assert isinstance(values[var], SecretUrl) and values[var].get_secret_value() == url
        assert str(values[var]) == masked and masked in repr(values[var])
    shown = repr(s) + str(s) + s.model_dump_json() + repr(s.redacted())
    for secret in ("pw-db-1", "pw-bf-2", "tok-fg-3", "pw-bb-4", "tok-bb-5", "eternal:"):
        assert secret not in shown
    assert s.redacted()["database_url"] == URLS["ETERNAL_DATABASE_URL"][1]
    assert s.redacted()["exchange"]["public_url"] == URLS["ETERNAL_EXCHANGE__PUBLIC_URL"][1]


def test_an_invalid_value_of_a_secret_setting_is_refused_without_echoing_it(monkeypatch):
    monkeypatch.setenv("ETERNAL_EXCHANGE", '{"public_url": 12345678, "api_secret": 87654321}')
    message = _config_error()
    assert "ETERNAL_EXCHANGE__PUBLIC_URL='**********'" in message
    assert "12345678" not in message and "87654321" not in message


# numbers are finite ---------------------------------------------------------------------------
@pytest.mark.parametrize("var, value", [
    ("ETERNAL_INITIAL_CAPITAL", "inf"),
    ("ETERNAL_INITIAL_CAPITAL", "nan"),
    ("ETERNAL_CORE__MIN_ORDER_USDT", "inf"),
    ("ETERNAL_TREND_1__FUNDING_EXIT_RATE_8H", "-inf"),       # no bound of its own
    ("ETERNAL_TACTICAL__MIN_DEPLOY_USDT", "NaN"),
    ("ETERNAL_ALLOCATION__STRONG_BULL_ADX", "Infinity"),
    ("ETERNAL_FUNDING__MIN_PREDICTED_RATE_8H", "nan"),
    ("ETERNAL_DATA__FEAR_GREED_TIMEOUT_S", "inf"),
])
def test_a_float_setting_of_inf_or_nan_is_refused_naming_the_variable(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    message = _config_error()
    assert message == f"invalid settings, nothing was run:\n  {var}={value!r}: Input should be a finite number"


def test_inf_inside_a_json_list_setting_is_refused(monkeypatch):
    monkeypatch.setenv("ETERNAL_EXECUTION__RETRY_DELAYS_S", "[1, Infinity]")
    assert "ETERNAL_EXECUTION__RETRY_DELAYS_S__1=inf: Input should be a finite number" in _config_error()


def test_every_settings_group_refuses_inf_and_nan():
    groups = [f.annotation for f in Settings.model_fields.values()
              if isinstance(f.annotation, type) and issubclass(f.annotation, SettingsModel)]
    assert len(groups) == 13
    assert Settings.model_config["allow_inf_nan"] is False
    assert all(g.model_config["allow_inf_nan"] is False and g.model_config["frozen"] for g in groups)


def test_a_key_without_its_secret_names_the_missing_variable_alone(monkeypatch):
    """Found by a new user: the refusal read ETERNAL_BYBIT__KEYS__MAIN__API_SECRET__API_KEY=...
    (the group's given keys appended to the missing one's name)."""
    monkeypatch.setenv("ETERNAL_MODE", "demo")
    monkeypatch.setenv("ETERNAL_BYBIT__KEYS__MAIN__API_KEY", "key-MAIN")
    [line] = _config_error().splitlines()[1:]
    assert line.strip() == "ETERNAL_BYBIT__KEYS__MAIN__API_SECRET: not set (field required)"
