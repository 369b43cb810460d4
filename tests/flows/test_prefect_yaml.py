"""Every deployment in prefect.yaml names a flow that exists and parameters that flow takes."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest
import yaml
from prefect import Flow

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENTS = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]


@pytest.mark.parametrize("spec", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_deployment_entrypoint_and_parameters(spec):
    path, name = spec["entrypoint"].split(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    flow = getattr(module, name)
    assert isinstance(flow, Flow), spec["entrypoint"]
    accepted = inspect.signature(flow.fn).parameters
    assert set(spec.get("parameters") or {}) <= set(accepted), spec["name"]
    # a nested deployment name points at a deployment of this file
    target = (spec.get("parameters") or {}).get("deployment")
    if target is not None:
        flow_name, deployment = target.split("/")
        named = {d["name"]: d for d in DEPLOYMENTS}
        assert deployment in named, target
        ref_path, ref_name = named[deployment]["entrypoint"].split(":")
        ref = getattr(importlib.import_module(ref_path.removesuffix(".py").replace("/", ".")),
                      ref_name)
        assert ref.name == flow_name, target
