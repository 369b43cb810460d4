"""Serve the deployments of `prefect.yaml` in this process (`make ui` runs it after the server
starts): schedules, the event trigger and concurrency limits apply exactly as declared there."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from pydantic import TypeAdapter

ROOT = Path(__file__).resolve().parents[1]


def deployments_from_yaml(path: Path = ROOT / "prefect.yaml", names: list[str] | None = None):
    """RunnerDeployments built from prefect.yaml's `deployments:` (work pools are ignored)."""
    from prefect.events.schemas.deployment_triggers import DeploymentTriggerTypes
    from prefect.flows import load_flow_from_entrypoint
    from prefect.schedules import Cron, Interval

    spec = yaml.safe_load(path.read_text())
    triggers = TypeAdapter(list[DeploymentTriggerTypes])
    out = []
    for item in spec["deployments"]:
        if names and item["name"] not in names:
            continue
        flow = load_flow_from_entrypoint(str(ROOT / item["entrypoint"]))
        schedules = [Interval(s["interval"]) if "interval" in s else Cron(s["cron"])
                     for s in item.get("schedules") or []]
        out.append(flow.to_deployment(
            name=item["name"],
            description=item.get("description"),
            tags=item.get("tags"),
            parameters=item.get("parameters") or {},
            schedules=schedules or None,
            concurrency_limit=item.get("concurrency_limit"),
            triggers=triggers.validate_python(item.get("triggers") or []),
        ))
    return out


def main(argv: list[str]) -> None:
    from prefect import serve

    serve(*deployments_from_yaml(names=argv or None))


if __name__ == "__main__":
    main(sys.argv[1:])
