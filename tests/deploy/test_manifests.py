"""The kustomize overlays: rendered, validated strictly and offline, and consistent with themselves.

Validation: built-in kinds against kubernetes-validate's strict schemas (also through its CLI, the way an
operator pipes `kubectl kustomize` into it), custom resources against the schemas vendored in k8s/schemas/.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from typing import Any

import pytest
from deploy_helpers import REPO, by_kind, k8s_validate, one, pod_labels, pod_specs

OVERLAYS = ["h100-2x8-lws", "h200-dp8-ep", "h200-tp8", "merge"]
CRD_KINDS = {"LeaderWorkerSet", "ScaledObject", "ServiceMonitor", "PrometheusRule"}


def test_overlays_are_the_expected_ones(rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert sorted(rendered) == OVERLAYS


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", k8s_validate.VERSIONS)
def test_overlay_validates_strictly(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, version: str
) -> None:
    errors = [p for obj in rendered[overlay] for p in k8s_validate.problems(obj, version)]
    assert errors == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kustomize_piped_to_kubernetes_validate_strict(overlay: str) -> None:
    """The operator's one-liner: it passes, and warns only about the kinds whose schemas we vendor."""
    render = subprocess.run(["kubectl", "kustomize", str(REPO / "k8s/overlays" / overlay)],
                            check=True, capture_output=True, text=True)  # fmt: skip
    cli = [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet", "-k", "1.32.0", "-"]
    out = subprocess.run(cli, input=render.stdout, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    warned = {ln.split("kind ")[1].split(" ")[0] for ln in out.stdout.splitlines() if ln.startswith("WARN")}
    assert warned <= CRD_KINDS, out.stdout


def test_validator_catches_what_it_should(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Typos and wrong values in every custom resource kind (and a pod template inside one) are errors."""
    objs = rendered["h100-2x8-lws"] + rendered["h200-tp8"]
    v = k8s_validate.VERSIONS[0]

    def broken(kind: str, edit: Any) -> list[str]:
        obj = copy.deepcopy(next(o for o in objs if o["kind"] == kind))
        edit(obj["spec"])
        return k8s_validate.problems(obj, v)

    worker = lambda s: s["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"][0]  # noqa: E731
    assert broken("LeaderWorkerSet", lambda s: worker(s).update(imagee="x"))
    assert broken("LeaderWorkerSet", lambda s: s.update(startupPolicy="Leader"))
    assert broken("ScaledObject", lambda s: s["triggers"][0]["metadata"].update(threshold=16))
    assert broken("ServiceMonitor", lambda s: s["endpoints"][0].update(intervall="15s"))
    assert broken("PrometheusRule", lambda s: s["groups"][1]["rules"][0].update({"for": "30 minutes"}))
    assert broken("Deployment", lambda s: s["template"]["spec"]["containers"][0].update(argz=[]))
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert k8s_validate.problems(unknown, v)  # no schema: an error, not a warning


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_and_references_resolve(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objs = rendered[overlay]
    labels = [lab for o in objs for lab in pod_labels(o)]

    def selects(sel: dict[str, Any]) -> int:
        """Pod templates a label selector (matchLabels, matchExpressions with In) matches."""
        match, exprs = sel.get("matchLabels", {}), sel.get("matchExpressions", [])
        assert all(e["operator"] == "In" for e in exprs)
        return sum(
            all(lab.get(k) == v for k, v in match.items())
            and all(lab.get(e["key"]) in e["values"] for e in exprs)
            for lab in labels
        )

    for kind in ("Service", "PodDisruptionBudget", "NetworkPolicy"):
        for o in by_kind(objs, kind):
            spec = o["spec"]
            sel = (
                {"matchLabels": spec["selector"]}
                if kind == "Service"
                else spec.get("selector", spec.get("podSelector"))
            )
            assert selects(sel) >= 1, f"{kind}/{o['metadata']['name']} selects no pod template"
    services = {s["metadata"]["name"]: s for s in by_kind(objs, "Service")}
    for sm in by_kind(objs, "ServiceMonitor"):
        match = [s for s in services.values() if all(s["metadata"]["labels"].get(k) == v
                 for k, v in sm["spec"]["selector"]["matchLabels"].items())]  # fmt: skip
        assert len(match) == 1
        ports = {p["name"] for p in match[0]["spec"]["ports"]}
        assert {e["port"] for e in sm["spec"]["endpoints"]} <= ports
    for so in by_kind(objs, "ScaledObject"):
        ref = so["spec"]["scaleTargetRef"]
        one(objs, ref["kind"], ref["name"])
    claims = {o["metadata"]["name"] for o in by_kind(objs, "PersistentVolumeClaim")}
    configmaps = {o["metadata"]["name"] for o in by_kind(objs, "ConfigMap")}
    for o in objs:
        for _, spec in pod_specs(o):
            for vol in spec.get("volumes", []):
                if "persistentVolumeClaim" in vol:
                    assert vol["persistentVolumeClaim"]["claimName"] in claims
                if "configMap" in vol:
                    assert vol["configMap"]["name"] in configmaps
            mounts = {m["name"] for c in spec["containers"] for m in c.get("volumeMounts", [])}
            assert mounts <= {vol["name"] for vol in spec.get("volumes", [])}


@pytest.mark.parametrize("overlay", ["h100-2x8-lws", "h200-dp8-ep", "h200-tp8"])
def test_server_pods_as_operators_expect(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objs = rendered[overlay]
    for o in objs:
        for role, spec in pod_specs(o):
            c = spec["containers"][0]
            if "chimera/server-gpu" not in c["image"]:
                continue
            assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
            assert c["resources"]["requests"]["nvidia.com/gpu"] == "8"
            shm = next(v for v in spec["volumes"] if v["name"] == "dshm")
            assert shm["emptyDir"]["medium"] == "Memory"
            assert any(m["mountPath"] == "/dev/shm" for m in c["volumeMounts"])
            model = next(m for m in c["volumeMounts"] if m["mountPath"] == "/models")
            assert model["readOnly"] is True
            assert spec["securityContext"]["runAsNonRoot"] is True
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            if role == "worker":
                continue
            startup = c["startupProbe"]
            assert startup["httpGet"]["path"] == "/ready"
            # Up to 100 minutes is what the DeepSeek-R1 anchors allow for a load: the budget must exceed it.
            assert startup["periodSeconds"] * startup["failureThreshold"] >= 100 * 60 * 1.15
            assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
            assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert by_kind(objs, "PodDisruptionBudget") and by_kind(objs, "NetworkPolicy")
    secret_vols = [v for o in objs for _, s in pod_specs(o) for v in s.get("volumes", []) if "secret" in v]
    assert {v["secret"]["secretName"] for v in secret_vols} == {"chimera-api-keys"}
