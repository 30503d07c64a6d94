"""Telemetry off before anything imports Prefect, however this package is entered (the CLI, a
worker's flow run, `python -c "from flows... import ..."`): an operator's setting still wins."""
import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
