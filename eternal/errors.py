"""One error hierarchy: each message says what failed, for which input, and what to do."""


class EternalError(Exception):
    """Base of every error the system raises on purpose."""


class ConfigError(EternalError):
    """Settings are invalid; nothing has run."""


class DatabaseUnavailable(EternalError):
    """The configured database cannot be reached."""


class DataError(EternalError):
    """Market data is missing or cannot be read."""


class DataQualityError(DataError):
    """Market data failed an expectation; no decision was taken on it."""

    def __init__(self, message: str, failures: list[dict] | None = None):
        super().__init__(message)
        self.failures = failures or []


class DataUnreachable(DataError):
    """The market data source cannot be reached (no network, DNS, a timeout): nothing was written."""


class StaleDataError(DataQualityError):
    """The last candle is not the last closed UTC day for the cycle's asof."""


class ExchangeError(EternalError):
    """The exchange refused or failed a request."""


class InsufficientFunds(ExchangeError):
    """The sleeve cannot pay for the order; retrying will not help."""


class OrderNotFound(ExchangeError):
    """The exchange has no order with that client order id."""


class RiskHalt(EternalError):
    """A circuit breaker or the kill switch stopped trading."""


class DuplicateOrder(ExchangeError):
    """The exchange already has an order with this client order id (Bybit 110072 / 170141)."""
