"""Helpers of the deployment tests: the manifest validator, and functions that walk rendered objects.

The validator is k8s/validate.py (a script operators run); it is loaded here by path.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def _load_validator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("k8s_validate", REPO / "k8s/validate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["k8s_validate"] = module
    spec.loader.exec_module(module)
    return module


k8s_validate = _load_validator()


def pod_specs(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(role, pod spec) of a workload: 'pod' for Deployments and Jobs, 'leader' / 'worker' for LeaderWorkerSets."""
    spec = obj.get("spec", {})
    if obj["kind"] in ("Deployment", "Job", "StatefulSet"):
        yield "pod", spec["template"]["spec"]
    elif obj["kind"] == "LeaderWorkerSet":
        lwt = spec["leaderWorkerTemplate"]
        yield "leader", lwt.get("leaderTemplate", lwt["workerTemplate"])["spec"]
        yield "worker", lwt["workerTemplate"]["spec"]


def pod_labels(obj: dict[str, Any]) -> list[dict[str, str]]:
    spec = obj.get("spec", {})
    if obj["kind"] == "LeaderWorkerSet":
        lwt = spec["leaderWorkerTemplate"]
        return [t["metadata"]["labels"] for t in (lwt.get("leaderTemplate"), lwt["workerTemplate"]) if t]
    if "template" in spec:
        return [spec["template"]["metadata"]["labels"]]
    return []


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]
