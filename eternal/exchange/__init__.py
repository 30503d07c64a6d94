from eternal.exchange.base import Exchange, ExchangeOrder
from eternal.exchange.paper import FillPolicy, PaperExchange

__all__ = ["Exchange", "ExchangeOrder", "FillPolicy", "PaperExchange"]
