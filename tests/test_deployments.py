"""prefect.yaml and deployments/serve.py describe the same schedules, with importable entrypoints."""
from __future__ import annotations

import importlib

import pytest
import yaml

from tests.conftest import ROOT

# deployment name -> (cron, flow name): the schedules of the spec
SCHEDULES = {
    "daily-cycle": ("5 0 * * *", "daily-cycle"),                     # 00:05 UTC, after the daily close
    "funding-collection": ("5 0,8,16 * * *", "funding-collection"),  # 5 min after each 8-hourly settlement
}


def _prefect_yaml() -> dict:
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    return {d["name"]: d for d in spec["deployments"]}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_deployment_is_scheduled_in_utc_in_prefect_yaml_and_served_alike(name):
    cron, flow_name = SCHEDULES[name]
    deployment = _prefect_yaml()[name]
    assert [(s["cron"], s["timezone"], s["active"]) for s in deployment["schedules"]] == [(cron, "UTC", True)]
    path, fn = deployment["entrypoint"].split(":")
    flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), fn)
    assert flow.name == flow_name

    from deployments.serve import deployments

    served = {d.name: d for d in deployments()}
    schedule = served[name].schedules[0].schedule
    assert (schedule.cron, schedule.timezone) == (cron, "UTC")
    assert served[name].entrypoint.endswith(deployment["entrypoint"]) and served[name].flow_name == flow_name


def test_prefect_yaml_and_serve_deploy_the_same_flows():
    from deployments.serve import deployments

    assert set(_prefect_yaml()) == {d.name for d in deployments()} == set(SCHEDULES)
