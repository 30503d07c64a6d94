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
    "quarterly-rebalance": ("15 0 1 1,4,7,10 *", "quarterly-rebalance"),   # quarter's first day, 00:15
}
MANUAL = {"deposit-intake": "deposit-intake", "backfill": "backfill",       # no schedule
          "halt": "halt", "resume": "resume", "sweep": "sweep"}


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

    assert set(_prefect_yaml()) == {d.name for d in deployments()} == set(SCHEDULES) | set(MANUAL)


@pytest.mark.parametrize("name", list(MANUAL))
def test_manual_deployments_have_no_schedule_and_typed_parameters(name):
    deployment = _prefect_yaml()[name]
    assert deployment["schedules"] == []
    from deployments.serve import deployments

    served = {d.name: d for d in deployments()}[name]
    assert served.schedules in (None, []) and served.flow_name == MANUAL[name]
    from prefect.utilities.callables import parameter_schema

    props = parameter_schema(served.flow if hasattr(served, "flow") else _flow(deployment)).model_dump()["properties"]
    wanted = {"deposit-intake": {"amount_usdt": "number"}, "backfill": {"monthly_deposit_usdt": "number"},
              "halt": {"reason": "string", "who": "string"}, "resume": {"reason": "string"},
              "sweep": {"grid": "object", "metric": "string", "address": "string", "workers": "integer"}}[name]
    for param, kind in wanted.items():
        assert kind in {props[param].get("type"), *(t.get("type") for t in props[param].get("anyOf", []))}


def _flow(deployment: dict):
    path, fn = deployment["entrypoint"].split(":")
    return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), fn)


def test_trading_deployments_never_overlap_with_themselves():
    from deployments.serve import deployments

    spec = _prefect_yaml()
    for d in deployments():
        trades = d.name not in ("backfill", "sweep")      # replays: no order leaves
        assert (spec[d.name].get("concurrency_limit") == 1) is trades
        limit = d.concurrency_limit
        limit = getattr(limit, "limit", limit)
        assert (limit == 1) is trades
