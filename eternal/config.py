"""Settings: pydantic-settings, prefix ETERNAL_, nested with __, .env supported.

Every engine parameter lives here with the spec's default, as a frozen model. Invalid settings
raise ConfigError naming the environment variable and the bad value, before anything runs.
"""
from __future__ import annotations

import functools
import json
import os
import re
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from eternal.errors import ConfigError
from eternal.secrets import SecretUrl, redact_url, register_settings, scrub

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
"""A fraction in [0, 1] (0.01 is 1 %)."""

ENV_PREFIX = "ETERNAL_"


class SettingsModel(BaseModel):
    """Base of every settings group: frozen, and no number may be inf or nan (a float setting of
    `inf` would pass `gt=0` and reach the ledger as an infinite balance); a name the group does not
    have is refused (a mistyped ETERNAL_RISK__MAX_ASSET_SHAR would otherwise leave the cap as it was)."""

    model_config = ConfigDict(frozen=True, allow_inf_nan=False, extra="forbid")


class Mode(StrEnum):
    PAPER = "paper"      # live public data, simulated fills
    REPLAY = "replay"    # backfill over stored history, fills at the next daily open
    DEMO = "demo"        # Bybit demo trading
    TESTNET = "testnet"
    LIVE = "live"        # real money: needs ETERNAL_LIVE_CONFIRM=yes


@functools.cache
def _weight_fields() -> tuple:
    """(sleeve, its field of SleeveWeights) for every sleeve: read at every close."""
    from eternal.models import Sleeve

    return tuple((s, s.weight_field) for s in Sleeve)


class SleeveWeights(SettingsModel):
    """Share of the portfolio each sleeve starts with (spec chapter 1)."""

    core: Fraction = 0.60
    trend_1: Fraction = 0.15
    trend_2: Fraction = 0.05
    funding: Fraction = 0.15
    tactical: Fraction = 0.05

    def by_sleeve(self) -> dict:
        return {s: getattr(self, name) for s, name in _weight_fields()}

    @model_validator(mode="after")
    def _sum_to_one(self) -> SleeveWeights:
        total = sum(self.model_dump().values())
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"sleeve weights must sum to 1, got {total:.6g} ({self.model_dump()})")
        return self


class FeeParams(SettingsModel):
    """Exchange fees as fractions of notional (Bybit VIP0 defaults)."""

    spot_maker: Fraction = 0.001
    spot_taker: Fraction = 0.001
    perp_maker: Fraction = 0.0002
    perp_taker: Fraction = 0.00055


class CoreParams(SettingsModel):
    """CORE-HODL rules (spec chapter 2)."""

    btc_share_of_invested: Fraction = 2 / 3   # BTC:ETH held 2:1
    cash_buffer: Fraction = 0.05              # minimum USDT kept in the sleeve
    tranches: int = Field(4, ge=1, le=52)     # initial deployment in equal tranches ...
    tranche_interval_days: int = Field(7, ge=1, le=90)  # ... this many days apart
    drift_threshold: Fraction = 0.10          # absolute weight drift that triggers a rebalance
    quarterly_rebalance: bool = True          # rebalance after each calendar quarter end
    ath_pause_drawdown: Fraction = 0.70       # no rebalance while an asset is >70 % below its ATH
    staking_apy: Fraction = 0.0               # ETH staking APY offered (0 = off)
    staking_min_apy: Fraction = 0.02          # stake only when the APY is at least this
    min_order_usdt: float = Field(10.0, ge=0) # smaller orders are not worth their fee

    @property
    def targets(self) -> dict[str, float]:
        invested = 1.0 - self.cash_buffer
        return {
            "BTC": invested * self.btc_share_of_invested,
            "ETH": invested * (1.0 - self.btc_share_of_invested),
        }


class TrendParams(SettingsModel):
    """TREND rules (spec chapter 3); TREND-2 overrides the SMA lengths."""

    fast_sma: int = Field(50, ge=2)
    slow_sma: int = Field(200, ge=3)
    adx_length: int = Field(14, ge=2)
    atr_length: int = Field(14, ge=2)
    adx_entry: float = Field(25.0, ge=0, le=100)
    adx_no_trend: float = Field(20.0, ge=0, le=100)
    no_trend_days: int = Field(14, ge=1)
    resume_days: int = Field(3, ge=1)
    hard_stop_atr: float = Field(2.0, gt=0)
    trailing_stop_atr: float = Field(3.0, gt=0)
    time_stop_days: int = Field(30, ge=1)
    funding_exit_rate_8h: float = 0.001
    risk_per_trade: Fraction = 0.01
    max_asset_notional: float = Field(0.5, ge=0)   # of sleeve equity
    max_leverage: float = Field(2.0, gt=0, le=2.0)  # the spec's hard cap
    correlation_window_days: int = Field(30, ge=2)
    correlation_halving: Fraction = 0.9


class Trend2Params(TrendParams):
    """TREND-2: the TREND rules on faster SMAs. Its own defaults, so that setting any one field
    (ETERNAL_TREND_2__ADX_ENTRY=30) keeps 20/100 instead of falling back to TREND-1's 50/200."""

    fast_sma: int = Field(20, ge=2)
    slow_sma: int = Field(100, ge=3)


class FundingParams(SettingsModel):
    """FUNDING rules (spec chapter 4)."""

    min_predicted_rate_8h: float = 0.0001
    max_basis: Fraction = 0.02
    max_asset_share: Fraction = 0.05
    max_holding_days: int = Field(14, ge=1)
    negative_settlements_breaker: int = Field(3, ge=1)
    compound_share: Fraction = 0.5
    hedge_tolerance: Fraction = 0.01
    leverage: float = Field(1.0, gt=0, le=2.0)


class TacticalParams(SettingsModel):
    """TACTICAL rules (spec chapter 5)."""

    drawdown_level_1: Fraction = 0.50
    drawdown_level_2: Fraction = 0.70
    fear_greed_below: int = Field(20, ge=0, le=100)
    negative_funding_rate_8h: float = -0.0005
    negative_funding_days: int = Field(3, ge=1)     # every settlement of these last days below the rate
    volatility_annualised: float = Field(0.80, gt=0)
    volatility_window_days: int = Field(30, ge=2)   # daily log returns, annualised with sqrt(365)
    deploy_level_1: Fraction = 0.50
    deploy_level_2: Fraction = 0.50
    deploy_signal: Fraction = 0.25
    max_deploy_per_event: Fraction = 0.50
    cooldown_days: int = Field(30, ge=0)
    btc_share: Fraction = 0.80
    profit_target: float = Field(1.0, gt=0)
    partial_exit_gain: float = Field(0.5, gt=0)
    partial_exit_window_days: int = Field(90, ge=1)
    max_lot_age_days: int = Field(365, ge=1)
    partial_exit_to_core: bool = True     # a partial exit's proceeds go to CORE too (False: stay as cash)
    min_deploy_usdt: float = Field(20.0, ge=0)   # a deployment smaller than this waits for more cash


class RegimeWeights(SettingsModel):
    """Target weights of one regime: CORE / TREND (both sleeves) / FUNDING / TACTICAL."""

    core: Fraction
    trend: Fraction
    funding: Fraction
    tactical: Fraction

    @model_validator(mode="after")
    def _sum_to_one(self) -> RegimeWeights:
        total = self.core + self.trend + self.funding + self.tactical
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"regime weights must sum to 1, got {total:.6g} ({self.model_dump()})")
        return self


class AllocationParams(SettingsModel):
    """Capital orchestration (spec chapter 6): regimes, targets, rebalancing, deposits."""

    strong_bull_adx: float = 40.0             # ADX(14) above this and close > SMA200
    high_volatility: float = Field(0.80, gt=0)   # 30-day realised volatility, annualised with sqrt(365)
    volatility_window_days: int = Field(30, ge=2)
    pre_halving_days: int = Field(180, ge=0)
    # BTC halvings are data; the 2028 date is an estimate that ETERNAL_ALLOCATION__HALVINGS can correct
    halvings: tuple[date, ...] = (date(2016, 7, 9), date(2020, 5, 11), date(2024, 4, 20), date(2028, 4, 17))
    band: Fraction = 0.10                     # a sleeve this far above its target gives the excess away
    trend_1_share: Fraction = 0.75            # TREND splits 3:1 between TREND-1 and TREND-2
    harvest_to: dict[str, Fraction] = {"core": 0.5, "funding": 0.3, "tactical": 0.2}   # TREND's excess
    min_transfer_usdt: float = Field(10.0, ge=0)
    targets: dict[str, RegimeWeights] = {
        "base": RegimeWeights(core=0.60, trend=0.20, funding=0.15, tactical=0.05),
        "strong_bull": RegimeWeights(core=0.50, trend=0.35, funding=0.10, tactical=0.05),
        "bear": RegimeWeights(core=0.70, trend=0.05, funding=0.15, tactical=0.10),
        "high_volatility": RegimeWeights(core=0.55, trend=0.15, funding=0.25, tactical=0.05),
        "pre_halving": RegimeWeights(core=0.50, trend=0.30, funding=0.15, tactical=0.05),
    }


class RiskParams(SettingsModel):
    """Governance (spec layer 4): pre-trade policy limits and the portfolio circuit breakers.

    Policy limits are fractions of equity; breaker levels are drawdowns of the unit value (net
    asset value per unit, so deposits do not move it) from its high-water mark."""

    breakers_enabled: bool = True             # False: research backfills only (refused outside replay/paper)
    max_asset_share: Fraction = 0.45          # one asset's net exposure, all sleeves, of the portfolio
    core_cash_floor: Fraction = 0.05          # CORE's cash buffer: no buy takes it below this share
    max_leverage: float = Field(2.0, gt=0, le=2.0)   # perp notional / sleeve equity, per sleeve
    trend_max_asset_share: Fraction = 0.50    # TREND: one asset's perp notional, of the sleeve, held
    funding_max_asset_share: Fraction = 0.05  # FUNDING: one asset's hedge notional, of the sleeve, held
    held_tolerance: Fraction = 0.10           # a held cap is restored once exceeded by this share of it
    level_drawdowns: tuple[Fraction, Fraction, Fraction, Fraction] = (0.10, 0.15, 0.20, 0.25)   # L1..L4
    l1_clear_drawdown: Fraction = 0.05        # L1 clears by itself at or below this
    l2_clear_drawdown: Fraction = 0.10        # L2 can be resumed at or below this
    l1_size: Fraction = 0.75                  # L1: TREND and FUNDING new sizes x this
    l1_tactical_pause_hours: int = Field(24, ge=0)
    l2_trend_size: Fraction = 0.50            # L2: TREND new sizes x this
    l2_no_entry_hours: int = Field(72, ge=0)
    l3_restart_size: Fraction = 0.25          # after an L3 resume, until the next quarterly rebalance
    # a backfill has no operator: it resumes this many days after a level's resume condition holds
    # (L2: drawdown at or below l2_clear_drawdown; L3, L4: the level's actions done); None: never
    replay_resume_days: int | None = Field(30, ge=0)

    @field_validator("replay_resume_days", mode="before")
    @classmethod
    def _never(cls, value: Any) -> Any:
        """ETERNAL_RISK__REPLAY_RESUME_DAYS=never (or none, null): the replay never resumes."""
        if isinstance(value, str) and value.strip().lower() in ("never", "none", "null", ""):
            return None
        return value

    @model_validator(mode="after")
    def _levels_increase(self) -> RiskParams:
        lv = self.level_drawdowns
        if not all(0 < a < b for a, b in zip(lv, lv[1:])) or not lv[0] > 0:
            raise ValueError(f"breaker levels must be increasing drawdowns above 0, got {lv}")
        if not self.l1_clear_drawdown < lv[0] or not self.l2_clear_drawdown < lv[1]:
            raise ValueError("a level's clearing drawdown must be below the level itself")
        return self


class DataSettings(SettingsModel):
    max_daily_move: Fraction = 0.60         # |close-to-close| must stay below this
    max_funding_rate_8h: Fraction = 0.03    # |funding| per settlement
    refresh_before_cycle: bool = True       # download missing days before a live-like cycle
    # whole history; a secret, since a proxy's URL may carry a user:password or a token
    fear_greed_url: SecretUrl = SecretUrl("https://api.alternative.me/fng/?limit=0&format=json")
    fear_greed_timeout_s: float = Field(10.0, gt=0)   # per request
    fear_greed_retries: int = Field(3, ge=0)          # after the first try


class ExecutionSettings(SettingsModel):
    retries: int = Field(3, ge=0)
    retry_delays_s: tuple[float, ...] = (1.0, 5.0, 15.0)


class ExchangeSettings(SettingsModel):
    public_url: SecretUrl | None = None   # override Bybit's API host (a proxy, or a local emulator in tests)
    api_key: SecretStr | None = None
    api_secret: SecretStr | None = None


class BybitKeys(SettingsModel):
    """One Bybit sub-account's API key pair (demo trading has keys of its own)."""

    api_key: SecretStr
    api_secret: SecretStr
    member_id: str | None = None      # the account's UID for universal transfers (default: read from its key)


class BybitSettings(SettingsModel):
    """Bybit accounts by sleeve: ETERNAL_BYBIT__KEYS__CORE__API_KEY, ..._API_SECRET (trend_1,
    trend_2, funding, tactical likewise), and `main`: the master UID, where deposits land and whose
    key makes every universal transfer between the sub-accounts (Bybit's rule). A sleeve without a
    key pair trades on the main account; sleeves on one account (the main one, or one key pair given
    to several) are virtual ledgers there (`eternal.exchange.bybit`)."""

    # not named `keys`: a model with a `keys` attribute reads as a mapping to dict() (Prefect does so)
    model_config = ConfigDict(frozen=True, allow_inf_nan=False, extra="forbid", populate_by_name=True)
    accounts: dict[str, BybitKeys] = Field({}, validation_alias="keys")
    max_slippage: Fraction = 0.005    # spec 8.1: no urgent order at a best price further off the decision's
    backoff_s: tuple[float, ...] = (0.25, 1.0, 4.0)   # a read tried again after these on 5xx, 429, 10006
    # an urgent (market) order left partly filled is looked up every poll, then its rest cancelled
    # after the timeout; the engines plan the rest again at their next decision (issue 13)
    partial_fill_timeout_s: float = Field(10.0, gt=0)
    partial_fill_poll_s: float = Field(0.5, gt=0)
    # ccxt's rate limiter is always on; this replaces its spacing per cost unit (Bybit's: 20 ms).
    # Unset: ccxt's. The test emulator, which has no limit of its own, runs at 1 ms.
    rate_limit_ms: float | None = Field(None, gt=0)
    # where deposits land at the main account: Bybit credits on-chain deposits to the Funding wallet
    # unless the account's deposit setting says Unified
    deposit_wallet: Literal["FUND", "UNIFIED"] = "FUND"
    timeout_s: float = Field(10.0, gt=0)   # a request unanswered this long is an uncertain outcome
    slot_wait_s: float = Field(300.0, gt=0, le=3600)   # the longest wait for the `bybit-api` Prefect slot


EXCHANGE_MODES = (Mode.DEMO, Mode.TESTNET, Mode.LIVE)
MAIN_ACCOUNT = "main"
"""ETERNAL_BYBIT__KEYS__MAIN__*: the master account, not a sleeve."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
        frozen=True,
        allow_inf_nan=False,
    )

    mode: Mode = Mode.PAPER
    live_confirm: str = ""
    database_url: SecretUrl = SecretUrl("sqlite:///var/eternal.db")
    # where `eternal backfill` writes its replay ledger (default OUT/backfill.db); a setting, not a
    # flow parameter, because a URL may carry a password and Prefect stores parameters in the clear
    backfill_database_url: SecretUrl | None = None
    data_dir: Path | None = None
    initial_capital: float = Field(100_000.0, gt=0)
    weights: SleeveWeights = SleeveWeights()
    fees: FeeParams = FeeParams()
    core: CoreParams = CoreParams()
    trend_1: TrendParams = TrendParams()
    trend_2: Trend2Params = Trend2Params()
    funding: FundingParams = FundingParams()
    tactical: TacticalParams = TacticalParams()
    allocation: AllocationParams = AllocationParams()
    risk: RiskParams = RiskParams()
    data: DataSettings = DataSettings()
    execution: ExecutionSettings = ExecutionSettings()
    exchange: ExchangeSettings = ExchangeSettings()
    bybit: BybitSettings = BybitSettings()
    # Apprise URLs, comma- or space-separated (tgram://..., mailto://..., json://...): they carry tokens
    alert_urls: SecretStr | None = None

    @model_validator(mode="after")
    def _alert_urls_readable(self) -> Settings:
        """Each Apprise URL at least `scheme://something` (a typo shows now, not at the first P0)."""
        if self.alert_urls is None:
            return self
        from eternal.alerts import parse_urls

        urls = parse_urls(self.alert_urls.get_secret_value())
        bad = [u for u in urls if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*://\S+", u)]
        if bad or not urls:
            raise ValueError(f"ETERNAL_ALERT_URLS: {len(bad) or 'no'} URL(s) not of the form scheme://... "
                             f"(Apprise URLs, e.g. tgram://bottoken/chatid, json://host/path), separated by "
                             f"commas or spaces; not shown: they may hold tokens")
        return self

    @model_validator(mode="after")
    def _breakers_stay_on_with_money(self) -> Settings:
        if not self.risk.breakers_enabled and self.mode in (Mode.DEMO, Mode.TESTNET, Mode.LIVE):
            raise ValueError(f"ETERNAL_RISK__BREAKERS_ENABLED=false is for research backfills only; it is "
                             f"refused in ETERNAL_MODE={self.mode.value!r}")
        return self

    @model_validator(mode="after")
    def _live_needs_confirmation(self) -> Settings:
        if self.mode == Mode.LIVE and self.live_confirm != "yes":
            raise ValueError(
                "ETERNAL_MODE='live' trades real money: set ETERNAL_LIVE_CONFIRM=yes to confirm"
                f" (ETERNAL_LIVE_CONFIRM={self.live_confirm!r})"
            )
        return self

    @model_validator(mode="after")
    def _exchange_modes_need_keys(self) -> Settings:
        """demo, testnet and live trade on Bybit: a key pair for every sleeve with a weight."""
        if self.mode not in EXCHANGE_MODES:
            return self
        wanted = [f for f, w in self.weights.model_dump().items() if w > 0]
        # a sleeve without a key pair of its own is a virtual ledger on the main account
        missing = [] if MAIN_ACCOUNT in self.bybit.accounts else [f for f in wanted if f not in self.bybit.accounts]
        if missing:
            raise ValueError(f"ETERNAL_MODE={self.mode.value!r} trades on Bybit{' demo trading (its own keys)' if self.mode == Mode.DEMO else ''}: "
                             f"no key pair for {', '.join(missing)}; set ETERNAL_BYBIT__KEYS__<SLEEVE>__API_KEY and "
                             f"__API_SECRET for each (e.g. ETERNAL_BYBIT__KEYS__{missing[0].upper()}__API_KEY)"
                             ", or ETERNAL_BYBIT__KEYS__MAIN__* alone: the master account, where the sleeves "
                             "without keys of their own trade as virtual ledgers")
        unknown = sorted(set(self.bybit.accounts) - set(self.weights.model_dump()) - {MAIN_ACCOUNT})
        if unknown:
            raise ValueError(f"ETERNAL_BYBIT__KEYS: no sleeve named {', '.join(unknown)} (sleeves: "
                             f"{', '.join(self.weights.model_dump())}; and {MAIN_ACCOUNT}, the master account)")
        by_key: dict[str, dict[str, list[str]]] = {}
        for name, keys in self.bybit.accounts.items():
            by_key.setdefault(keys.api_key.get_secret_value(), {}).setdefault(
                keys.api_secret.get_secret_value(), []).append(name)
        for secrets in by_key.values():
            if len(secrets) > 1:     # a typo, or a pair pasted half: which account is meant cannot be known
                names = [n for group in secrets.values() for n in group]
                raise ValueError(f"ETERNAL_BYBIT__KEYS: {' and '.join(names)} have the same API key with different "
                                 "secrets; sleeves that share one account (virtual ledgers) give it the same key pair")
        # sleeves given one key pair share that account as virtual ledgers (tasks.exchange)
        subs = {keys.api_key.get_secret_value() for f, keys in self.bybit.accounts.items() if f != MAIN_ACCOUNT}
        if len(subs) > 1 and MAIN_ACCOUNT not in self.bybit.accounts:
            raise ValueError(f"ETERNAL_MODE={self.mode.value!r} with {len(subs)} Bybit sub-accounts moves money "
                             "between them (deposits, rebalancing), which Bybit allows the master account's key "
                             "only: set ETERNAL_BYBIT__KEYS__MAIN__API_KEY and __API_SECRET (the master UID, "
                             "where deposits land)")
        return self

    def redacted(self) -> dict[str, Any]:
        """Effective settings as plain data: every secret replaced by '**********', a URL shown with
        its user:password and token-like query values masked (an operator still sees the host)."""
        return json.loads(self.model_dump_json())  # SecretStr dumps as '**********', SecretUrl masked'


def _known_fields(group: tuple) -> str:
    """'; ETERNAL_RISK__ has: a, b, ...' for the settings group at `group` (empty if unknown)."""
    model: Any = Settings
    for part in group:
        field = getattr(model, "model_fields", {}).get(str(part))
        model = field.annotation if field is not None else None
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return ""
    return f"; {_env_name(group)}__ has: {', '.join(model.model_fields)}"


def _env_name(loc: tuple) -> str:
    parts = [str(p) for p in loc if not str(p).startswith(("function-", "model"))]
    return ENV_PREFIX + "__".join(p.upper() for p in parts) if parts else ENV_PREFIX + "*"


def load_settings(**overrides: Any) -> Settings:
    """Build settings from env/.env (and overrides); raise ConfigError naming field and value."""
    try:
        settings = Settings(**overrides)
    except SettingsError as exc:  # a group variable (ETERNAL_WEIGHTS, ...) that is not valid JSON
        raise ConfigError(_unparseable(exc)) from None
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(err.get("loc", ()))
            value = err.get("input")
            msg = err["msg"].removeprefix("Value error, ")
            if err.get("type") == "extra_forbidden":
                msg = "no such setting" + _known_fields(loc[:-1])
            if not loc:  # a rule across fields: its message names the fields itself
                lines.append(msg)
            elif err.get("type") == "missing":   # its input is the group around it: name the variable alone
                lines.append(f"{_env_name(loc)}: not set ({msg.lower()})")
            elif isinstance(value, dict):  # a rule across a group: name each variable given
                given = ", ".join(f"{_env_name((*loc, k))}={_shown(str(k), v)}" for k, v in value.items())
                lines.append(f"{given or _env_name(loc)}: {msg}")
            else:
                secret = next((str(p) for p in loc if _is_secret(str(p))), None)
                shown = _shown(secret, value) if secret else repr(value)
                lines.append(f"{_env_name(loc)}={shown}: {msg}")
        raise ConfigError(scrub("invalid settings, nothing was run:\n  " + "\n  ".join(lines))) from None
    register_settings(settings)      # from now on every log record and error text is scrubbed of them
    return settings


SECRET_FIELDS = frozenset({"database_url", "backfill_database_url", "fear_greed_url", "public_url", "alert_urls",
                           "api_key", "api_secret"})
"""Settings that can carry a credential: never echoed (URLs only masked)."""


def _is_secret(name: str) -> bool:
    name = name.lower()
    return name in SECRET_FIELDS or any(w in name for w in ("secret", "key", "password", "token"))


def _shown(name: str, value: Any) -> str:
    """A given value as an error message may show it."""
    if not _is_secret(name):
        return repr(value)
    return repr(redact_url(value)) if name.endswith("_url") and isinstance(value, str) else "'**********'"


def _unparseable(exc: SettingsError) -> str:
    m = re.search(r'field "([^"]+)"', str(exc))
    var = ENV_PREFIX + (m[1].upper() if m else "*")
    given = [f"{k}={_shown_raw(k.upper().removeprefix(ENV_PREFIX), v)}" for k, v in sorted(os.environ.items())
             if k.upper() == var or k.upper().startswith(var + "__")]
    return scrub(f"invalid settings, nothing was run:\n  {', '.join(given) or var}: cannot be parsed "
            f"({exc}); a group variable takes JSON, e.g. {ENV_PREFIX}WEIGHTS='{{\"core\": 0.6, ...}}', "
            f"a single field its plain value, e.g. {ENV_PREFIX}WEIGHTS__CORE=0.6")


def _shown_raw(name: str, value: str) -> str:
    """A variable's raw text as a message may show it: a group holding a secret field (the
    malformed JSON of ETERNAL_EXCHANGE, ETERNAL_DATA) is not shown at all, since it cannot be parsed
    to find the secret in it."""
    parts = name.lower().split("__")
    model: Any = Settings
    for part in parts:        # the model of the group the variable sets, if any
        field = getattr(model, "model_fields", {}).get(part)
        model = field.annotation if field is not None else None
    holds_secret = isinstance(model, type) and issubclass(model, BaseModel) and any(
        _is_secret(f) for f in model.model_fields)
    if holds_secret:
        return "<not shown: it may hold a secret>"
    return _shown(parts[-1], value)
