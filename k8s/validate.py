"""Render every kustomize overlay and validate each object offline and strictly (unknown fields are errors).

Built-in kinds go through kubernetes-validate's strict schemas for each Kubernetes version in VERSIONS. Custom
resources (KEDA ScaledObject, Prometheus Operator ServiceMonitor / PrometheusRule, LeaderWorkerSet) go through
the JSON schemas vendored in k8s/schemas/ (their sources are in each file's $comment), with pod templates
checked against the same strict Kubernetes definitions. A kind without a schema is an error, not a warning
(kubernetes-validate's CLI only warns, and has no way to load CRD schemas).

    python k8s/validate.py                       # every overlay under k8s/overlays
    python k8s/validate.py k8s/overlays/merge    # some
"""

from __future__ import annotations

import json
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate.utils import SchemaNotFoundError
from referencing import Registry, Resource

K8S = Path(__file__).resolve().parent
SCHEMAS = K8S / "schemas"
VERSIONS = ("1.32.0", "1.37.0")  # the oldest Kubernetes these manifests support, and the newest schemas here


def overlays() -> list[Path]:
    return sorted(p for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())


def render(overlay: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize OVERLAY`, parsed: one dict per object."""
    out = subprocess.run(["kubectl", "kustomize", str(overlay)], check=True, capture_output=True, text=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@cache
def _k8s_definitions(version: str) -> Resource:
    """kubernetes-validate's strict `_definitions.json` for `version` (what embedded pod templates refer to)."""
    root = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    major_minor = ".".join(version.split(".")[:2])
    return Resource.from_contents(
        json.loads((root / f"v{major_minor}.0-local-strict/_definitions.json").read_text())
    )


@cache
def _crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> vendored schema."""
    found = {}
    for path in SCHEMAS.glob("*.json"):
        schema = json.loads(path.read_text())
        for gvk in schema["x-kubernetes-group-version-kind"]:
            found[(f"{gvk['group']}/{gvk['version']}", gvk["kind"])] = schema
    return found


def problems(obj: dict[str, Any], version: str) -> list[str]:
    """What is wrong with one rendered object against Kubernetes `version` (empty: valid)."""
    name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    crd = _crd_schemas().get((obj.get("apiVersion", ""), obj.get("kind", "")))
    if crd is not None:
        registry = Registry().with_resource(
            "https://kubernetes.io/api/_definitions.json", _k8s_definitions(version)
        )
        validator = jsonschema.Draft202012Validator(crd, registry=registry)
        return [
            f"{name}: {'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)
        ]
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{name}: {'.'.join(map(str, e.path))}: {e.message}"]
    except SchemaNotFoundError as e:
        return [f"{name}: {e.message}; vendor its schema into k8s/schemas/"]
    return []


def main(argv: list[str]) -> int:
    failed = 0
    for overlay in [Path(a) for a in argv] or overlays():
        objs = render(overlay)
        errors = [p for v in VERSIONS for o in objs for p in problems(o, v)]
        for e in errors:
            print(f"ERROR {overlay}: {e}")
        print(
            f"{'FAIL' if errors else 'ok  '} {overlay}: {len(objs)} objects, Kubernetes {', '.join(VERSIONS)}"
        )
        failed += bool(errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
