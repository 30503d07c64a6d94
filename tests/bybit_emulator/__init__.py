"""Bybit V5 emulator for tests (issue 13): see server.py."""
from .server import BybitEmulator, point_at

__all__ = ["BybitEmulator", "point_at"]
