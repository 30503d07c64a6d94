"""prefect.yaml and deployments/serve.py describe the same schedules, with importable entrypoints."""
from __future__ import annotations

import importlib

import yaml

from tests.conftest import ROOT


def test_daily_cycle_is_deployed_at_0005_utc_in_prefect_yaml_and_served_alike():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    by_name = {d["name"]: d for d in spec["deployments"]}
    daily = by_name["daily-cycle"]
    assert daily["schedules"][0]["cron"] == "5 0 * * *" and daily["schedules"][0]["timezone"] == "UTC"
    path, fn = daily["entrypoint"].split(":")
    flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), fn)
    assert flow.name == "daily-cycle"

    from deployments.serve import deployments

    served = {d.name: d for d in deployments()}
    assert set(served) == set(by_name)
    cron = served["daily-cycle"].schedules[0].schedule
    assert cron.cron == "5 0 * * *" and cron.timezone == "UTC"
