"""The node <-> scheduler documents: what the node writes is what the fleet client reads."""

from __future__ import annotations

import json

import pytest

from distro.sizes import SizeError, parse_size
from distro.wire import (
    DocumentError,
    ItemStatus,
    PlanArtifact,
    PlanError,
    PlanSpec,
    PlanStatus,
    RefreshReport,
    parse_plan,
    plan_to_json,
)
from syncer.fleet import NodePlanStatus

STATUS = PlanStatus("north-abc", "failed", 3, 1, 1, 300, 100, 12.5, None,
                    (ItemStatus(2, "apt", "main", "pool/x.deb", 100, "failed", 4, "502: gone"),))


def test_plan_status_round_trips_through_json_text() -> None:
    assert PlanStatus.from_json(json.loads(json.dumps(STATUS.to_json()))) == STATUS


@pytest.mark.parametrize("broken", [
    [], {"plan_id": "p"}, {**STATUS.to_json(), "done": "three"},
    {**STATUS.to_json(), "failures": [{"path": "x"}]}, {**STATUS.to_json(), "failures": 3},
])
def test_plan_status_rejects_what_is_not_one(broken: object) -> None:
    with pytest.raises(DocumentError):
        PlanStatus.from_json(broken)


def test_fleet_wraps_the_node_document_or_says_why_not() -> None:
    ok = NodePlanStatus.answered("http://n", STATUS.to_json())
    assert ok.plan == STATUS and ok.state == "failed" and ok.reachable
    assert ok.to_json()["done"] == 1 and ok.to_json()["node"] == "http://n"
    bad = NodePlanStatus.answered("http://n", {"plan_id": "p", "state": "active"})
    assert bad.plan is None and bad.state == "error" and "total" in bad.error


def test_plan_spec_round_trip_and_rejection() -> None:
    spec = PlanSpec("p1", (PlanArtifact("pypi", "local", "a/a-1.whl", "0" * 64, 5),), 2, 1000)
    assert parse_plan(json.loads(plan_to_json(spec))) == spec
    with pytest.raises(PlanError, match="sha256"):
        parse_plan({"plan_id": "p", "artifacts": [{"kind": "apt", "repo": "m", "path": "x",
                                                   "sha256": "XY", "size": 1}]})


def test_refresh_report_round_trip() -> None:
    report = RefreshReport("apt", "main", "stable", True, False, 10, 100)
    assert RefreshReport.from_json(report.to_json()) == report
    with pytest.raises(DocumentError):
        RefreshReport.from_json({**report.to_json(), "changed": "yes"})


def test_size_error_names_the_key() -> None:
    assert parse_size("1.5K") == 1536
    with pytest.raises(SizeError, match="regions.x.bandwidth"):
        parse_size("lots", "regions.x.bandwidth")
